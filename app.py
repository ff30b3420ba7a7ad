"""Start the studio in the browser.

    python app.py              # local: 127.0.0.1, everything on (GRADIO_SERVER_NAME=0.0.0.0 to serve the network)
    python app.py --public     # public: caps, admin-only training, blind-safe arena (automatic on a Space)
    python app.py --mcp        # also serve the studio's tools over MCP (/gradio_api/mcp/)

See the README's "Hosting" section for the caps, admins and persistence.
"""
import argparse

from studio.hosting import Hosting
from studio.ui import build_app, launch


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="SDXL-family studio (Gradio)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--public", action="store_true", default=None,
                      help="public mode: caps, admin-only training and export (default on a Space: SPACE_ID set)")
    mode.add_argument("--local", dest="public", action="store_false",
                      help="local mode even on a Space (trusts every visitor: only for a private copy)")
    parser.add_argument("--mcp", action="store_true", help="serve the tools over MCP too (needs the mcp package)")
    parser.add_argument("--port", type=int, default=None, help="port (default: GRADIO_SERVER_PORT or 7860)")
    args = parser.parse_args(argv)
    hosting = Hosting.from_env(public=args.public, mcp=args.mcp)
    launch(build_app(hosting=hosting), hosting, **({"server_port": args.port} if args.port else {}))


if __name__ == "__main__":
    main()
