"""Backends in other processes: a backend pickles without its API client, which is made again where it lands.

A Dask graph that runs on a ``dask.distributed`` cluster is pickled and sent
to worker processes. An API client holds locks and an HTTP pool (it does not
pickle) and its API key, which must never travel inside a graph. So a backend
pickles a :class:`ClientRecipe` in place of its client: the client's class,
base URL, organisation, project, timeout and retries, and the *name* of the
environment variable its key came from (the SDK's own, ``OPENAI_API_KEY`` or
``ANTHROPIC_API_KEY``, else another variable holding the same value). The
worker makes the client again with the key it finds under that name in its
own environment. A client whose key is in no environment variable, or a
client class other than ``openai.OpenAI`` / ``anthropic.Anthropic``, is
refused with a message saying what to do. Custom headers and HTTP clients are
not carried (they may hold secrets too).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Dict, Optional

from ..errors import BackendUnavailableError, OptionError

__all__ = ["ClientRecipe", "PicklesWithoutClient"]

#: The SDK's own key variable, preferred when several variables hold the key.
_SDK_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}


def _key_source(kind: str, key: Optional[str]) -> Optional[str]:
    """The name of an environment variable holding ``key`` (the SDK's own first), or None."""
    if not key:
        return None
    preferred = _SDK_KEY_ENV[kind]
    if os.environ.get(preferred) == key:
        return preferred
    return next((name for name in sorted(os.environ) if os.environ[name] == key), None)


@dataclass(frozen=True)
class ClientRecipe:
    """How to make an API client again in another process, without its API key.

    Build one with :meth:`of`; :meth:`build` makes the client from the
    environment of the process it runs in.

    Examples
    --------
    >>> import os, openai, pickle
    >>> os.environ["MY_SERVER_KEY"] = "sk-local-example"
    >>> c = openai.OpenAI(api_key=os.environ["MY_SERVER_KEY"], base_url="http://127.0.0.1:8000/v1")
    >>> recipe = ClientRecipe.of(c)
    >>> recipe.key_env, b"sk-local-example" in pickle.dumps(recipe)
    ('MY_SERVER_KEY', False)
    >>> str(recipe.build().base_url)
    'http://127.0.0.1:8000/v1/'
    >>> del os.environ["MY_SERVER_KEY"]
    """

    kind: str  # "openai" or "anthropic"
    base_url: str
    key_env: Optional[str]
    options: Dict[str, Any]

    @classmethod
    def of(cls, client: Any, argument: str = "client") -> "ClientRecipe":
        """The recipe of ``client``; :class:`~pdbatch.errors.OptionError` when it cannot be made again safely."""
        kind = type(client).__module__.split(".")[0]
        name = type(client).__name__
        if (kind, name) not in (("openai", "OpenAI"), ("anthropic", "Anthropic")):
            raise OptionError(
                f"{argument}: a {type(client).__module__}.{name} client cannot be sent to other processes (Dask "
                f"workers); pass an openai.OpenAI or anthropic.Anthropic client, or no client and set "
                f"OPENAI_API_KEY / OPENAI_BASE_URL in the workers' environment")
        key_env = _key_source(kind, getattr(client, "api_key", None))
        if key_env is None and getattr(client, "api_key", None):
            sdk = _SDK_KEY_ENV[kind]
            raise OptionError(
                f"{argument}: the client's API key is in no environment variable, and a key is never put into a "
                f"Dask graph; put it in one on every worker and build the client from it, e.g. "
                f"{name}(api_key=os.environ[{sdk!r}], base_url=...), or pass no client to use {sdk}")
        options: Dict[str, Any] = {"timeout": client.timeout, "max_retries": client.max_retries}
        if kind == "openai":
            options.update(organization=client.organization, project=client.project)
        return cls(kind, str(client.base_url), key_env, options)

    def build(self) -> Any:
        """The client, its key read from this process's environment."""
        key = None
        if self.key_env is not None:
            key = os.environ.get(self.key_env)
            if not key:
                raise BackendUnavailableError(
                    f"the API client's key came from the environment variable {self.key_env} where the Dask graph "
                    f"was built, and {self.key_env} is not set in this worker process (pid {os.getpid()}); set it "
                    f"in every worker's environment, e.g. LocalCluster(env={{{self.key_env!r}: ...}})")
        if self.kind == "openai":
            import openai

            return openai.OpenAI(api_key=key, base_url=self.base_url, **self.options)
        import anthropic

        return anthropic.Anthropic(api_key=key, base_url=self.base_url, **self.options)


class PicklesWithoutClient:
    """Mixin of the backends that hold a client (``client``, and ``_create_client`` where kept).

    Pickling keeps every other attribute and a :class:`ClientRecipe` of the
    client; unpickling makes the client again (and its ``_create_client``
    twin without retries). The provider the backend reported is kept: the
    client is made for the same base URL.
    """

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_early", None)  # answers parsed while downloading (backends/batch.py): this process's only
        state["client"] = ClientRecipe.of(self.client, argument=f"{type(self).__name__}(client=...)")
        state["_create_client"] = "_create_client" in state
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        state = dict(state)
        recipe, twin = state.pop("client"), state.pop("_create_client")
        self.__dict__.update(state)
        self.client = recipe.build()
        if twin:
            self._create_client = self.client.with_options(max_retries=0)
