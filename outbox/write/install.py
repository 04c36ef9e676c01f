"""Installing an Outbox's session hooks on a session factory, and finding them again.

The registry maps a `Session` class to the hooks installed on it. A class holds at most one
Outbox; sessions of a subclass use the nearest one in their class's MRO. Factories of every
kind (`sessionmaker`, `scoped_session`, `async_sessionmaker`, Session and AsyncSession classes)
come down to the sync `Session` class whose events the hooks listen to.
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import Any, cast

from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from outbox.errors import ConfigurationError
from outbox.write.hooks import SessionHooks

_installed: weakref.WeakKeyDictionary[type[Session], SessionHooks] = weakref.WeakKeyDictionary()
_install_lock = threading.Lock()


def hooks_for(session: Session) -> SessionHooks | None:
    """The hooks installed on `session`'s class (or the nearest base class), if any."""
    for cls in type(session).__mro__:
        found = _installed.get(cls)
        if found is not None:
            return found
    return None


def sync_session(session: Any) -> Session:
    """The sync `Session` behind `session`: itself, an AsyncSession's ``sync_session``, or
    the current session of a `scoped_session` / `async_scoped_session` registry (Flask-SQLAlchemy's
    ``db.session`` is one)."""
    if isinstance(session, Session):
        return session
    asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")
    if isinstance(session, scoped_session) or (
        asyncio_ext is not None and isinstance(session, asyncio_ext.async_scoped_session)
    ):
        # Calling the registry returns (creating if needed) the session of this scope: the one
        # the application's next statement uses.
        session = session()
        if isinstance(session, Session):
            return session
    if asyncio_ext is not None and isinstance(session, asyncio_ext.AsyncSession):
        return cast(Session, session.sync_session)
    raise ConfigurationError(
        f"expected a Session, AsyncSession or scoped_session, got {type(session).__qualname__}"
    )


def describe(session: Session) -> str:
    return f"sessions of {type(session).__qualname__}"


class SessionInstaller:
    """Registers one Outbox's `SessionHooks` on session factories, and removes them again."""

    def __init__(self, hooks: SessionHooks) -> None:
        self.hooks = hooks
        # async_sessionmaker -> the sync_session_class value install() replaced.
        self._replaced_sync_class: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()

    def install(self, target: Any) -> None:
        """`Outbox.install`: listen on `target`'s session class. Idempotent."""
        with _install_lock:
            cls = self._session_class(target, create=True)
            owner = _installed.get(cls)
            if owner is self.hooks:
                return
            if owner is not None:
                raise ConfigurationError(
                    f"{cls.__qualname__} already has {owner.owner!r} installed; a session "
                    f"factory holds one Outbox (uninstall it first, or use a separate "
                    f"sessionmaker)"
                )
            for name, fn in self.hooks.listeners:
                sa_event.listen(cls, name, fn)
            _installed[cls] = self.hooks

    def uninstall(self, target: Any) -> None:
        """`Outbox.uninstall`: remove what `install` added. Harmless when not installed."""
        with _install_lock:
            cls = self._session_class(target, create=False)
            if _installed.get(cls) is not self.hooks:
                return
            for name, fn in self.hooks.listeners:
                if sa_event.contains(cls, name, fn):
                    sa_event.remove(cls, name, fn)
            del _installed[cls]
            if target in self._replaced_sync_class:
                previous = self._replaced_sync_class.pop(target)
                if previous is None:
                    target.kw.pop("sync_session_class", None)
                else:
                    target.kw["sync_session_class"] = previous

    def is_installed_on(self, session: Session) -> bool:
        return any(_installed.get(cls) is self.hooks for cls in type(session).__mro__)

    def _session_class(self, target: Any, *, create: bool) -> type[Session]:
        if isinstance(target, scoped_session):
            target = target.session_factory
        if isinstance(target, sessionmaker):
            return cast(type[Session], target.class_)
        if isinstance(target, type) and issubclass(target, Session):
            return target
        asyncio_ext = sys.modules.get("sqlalchemy.ext.asyncio")
        if asyncio_ext is not None:
            if isinstance(target, asyncio_ext.async_scoped_session):
                target = target.session_factory
            if isinstance(target, asyncio_ext.async_sessionmaker):
                given = target.kw.get("sync_session_class")
                if given is not None and given is not Session:
                    return cast(type[Session], given)
                if not create:
                    return Session
                # A private subclass: listeners on it reach only this factory's sessions.
                private = type("OutboxSession", (Session,), {})
                self._replaced_sync_class[target] = given
                target.kw["sync_session_class"] = private
                return private
            if isinstance(target, type) and issubclass(target, asyncio_ext.AsyncSession):
                return cast(type[Session], cast(Any, target).sync_session_class)
        raise ConfigurationError(
            "install() takes a Session class, a sessionmaker, a scoped_session (or "
            "async_scoped_session), an "
            f"async_sessionmaker or an AsyncSession class, not {target!r}"
        )
