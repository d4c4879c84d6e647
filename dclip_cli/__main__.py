"""``python -m dclip_cli`` runs the CLI."""

from dclip_cli.cli.app import main

if __name__ == "__main__":
    main()
