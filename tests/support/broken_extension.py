"""A processing extension module that fails at import (tests of the startup error)."""
raise RuntimeError("this module cannot be imported")
