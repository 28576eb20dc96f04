"""Parts of the dev host (tools/devhost.py)."""
