"""The processing extension: a customer's callable (PROCESSING_EXTENSION = 'package.module:function')
that may change the ticket decision of each mail before the CRM writes (docs/extensions.md).

Loaded once per worker by shared/bootstrap.py: a module that cannot be imported, a missing or
non-callable attribute, or a signature that cannot take (mail, decision, change) is a ConfigError at
startup, naming the setting. Called with the parsed mail (shared/domain/mail.InboundMail), the
default Decision and a DecisionChange (shared/domain/decision.py); sync or async. Whatever it raises
fails the mail permanently (Failed, with the extension's message; no automatic retries): except a
TransientError, which it may raise to ask for a retry later. An async extension has
EXTENSION_TIMEOUT seconds.
"""
from __future__ import annotations

import asyncio
import importlib
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable

from ..config import EXTENSION_SPEC, ConfigError
from ..domain.decision import Decision, DecisionChange
from ..domain.errors import PermanentError, TransientError
from ..domain.mail import InboundMail

log = logging.getLogger("inbox.extension")
EXTENSION_TIMEOUT = 60.0
MAX_MESSAGE_CHARS = 500


class ExtensionFailed(PermanentError):
    """The processing extension raised, returned something, or took too long: the mail is Failed."""


@dataclass(frozen=True)
class Extension:
    spec: str
    fn: Callable[..., Any]

    @property
    def name(self) -> str:
        return self.spec


def load_extension(spec: str) -> Extension | None:
    """The callable named by PROCESSING_EXTENSION ('' -> None). ConfigError saying what is wrong."""
    spec = (spec or "").strip()
    if not spec:
        return None
    if not EXTENSION_SPEC.match(spec):
        raise ConfigError(f"PROCESSING_EXTENSION must look like 'package.module:function', got {spec!r}")
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise ConfigError(f"PROCESSING_EXTENSION {spec!r}: there is no module {module_name!r} (ship it with the "
                              f"app, next to function_app.py, and check the spelling)") from None
        raise ConfigError(f"PROCESSING_EXTENSION {spec!r}: importing {module_name!r} failed: module {exc.name!r} "
                          "is missing (add it to requirements.txt?)") from None
    except Exception as exc:  # noqa: BLE001 - the customer's module may raise anything at import
        raise ConfigError(f"PROCESSING_EXTENSION {spec!r}: importing {module_name!r} raised "
                          f"{type(exc).__name__}: {str(exc)[:300]}") from None
    fn = getattr(module, attr, None)
    if fn is None:
        raise ConfigError(f"PROCESSING_EXTENSION {spec!r}: module {module_name!r} has no {attr!r}")
    if not callable(fn):
        raise ConfigError(f"PROCESSING_EXTENSION {spec!r}: {attr!r} is a {type(fn).__name__}, not a function")
    try:
        inspect.signature(fn).bind(None, None, None)
    except TypeError:
        raise ConfigError(f"PROCESSING_EXTENSION {spec!r}: {attr}{inspect.signature(fn)} cannot be called with "
                          "(mail, decision, change)") from None
    except ValueError:
        pass  # no signature to inspect (a builtin): calling it will tell
    log.info("extension.loaded extension=%s async=%s", spec, inspect.iscoroutinefunction(fn))
    return Extension(spec, fn)


async def run_extension(ext: Extension, mail: InboundMail, decision: Decision,
                        timeout: float = EXTENSION_TIMEOUT) -> DecisionChange:
    """Call the extension; what it asked for is in the returned DecisionChange."""
    change = DecisionChange(decision)
    deadline = None
    try:
        result = ext.fn(mail, decision, change)
        if inspect.isawaitable(result):
            async with asyncio.timeout(timeout) as deadline:
                result = await result
    except TransientError:
        raise  # the extension asks for a retry (e.g. a service it needs is down)
    except TimeoutError:
        if deadline is not None and deadline.expired():
            raise ExtensionFailed(f"processing extension {ext.spec} did not finish within {timeout:g} s") from None
        raise ExtensionFailed(f"processing extension {ext.spec} raised TimeoutError") from None
    except Exception as exc:  # noqa: BLE001 - anything the customer's code raises fails the mail visibly
        raise ExtensionFailed(f"processing extension {ext.spec} raised {type(exc).__name__}: "
                              f"{str(exc)[:MAX_MESSAGE_CHARS]}") from None
    if result is not None:
        raise ExtensionFailed(f"processing extension {ext.spec} returned a {type(result).__name__}: it must return "
                              "None and change the decision through its third argument")
    return change
