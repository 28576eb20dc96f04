"""Processing extensions (PROCESSING_EXTENSION) written out: Lime Inbox's classic customisations of
`_handle_email_message`, as working, tested code (docs/extensions.md; tests/unit/test_extensions.py)."""
