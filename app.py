"""Start the studio in the browser: python app.py  (GRADIO_SERVER_NAME=0.0.0.0 to serve on the network)."""
from studio.ui import build_app, launch

if __name__ == "__main__":
    launch(build_app())
