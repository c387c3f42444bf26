"""The provider registry: a pluggy plugin manager and name lookup.

Providers come from plugins: the built-in ones, and any distribution that
declares an entry point in the ``polars_embed`` group. A provider is looked up
by ``"name"`` or ``"name:model"``. Rerankers come from the same plugins, in a
namespace of their own (``"cohere:rerank-v3.5"`` is Cohere's reranker), and are
looked up the same way.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import importlib.metadata
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import pluggy

from polars_embed import hookspecs
from polars_embed.errors import ConfigError, DuplicateProviderError, InputTypeError, UnknownProviderError
from polars_embed.provider import (
    CallableProvider,
    Provider,
    check_known,
    check_option,
    option_role,
    secret_digest,
)
from polars_embed.reranker import Reranker

log = logging.getLogger(__name__)

DEFAULT_PROVIDER = "sentence-transformers"
#: Providers a registry keeps built, most recently used first: each keeps its SDK client,
#: its width probe and its loaded model for the next call that names it the same way.
MAX_BUILT_PROVIDERS = 64
BUILTIN_PLUGINS = (
    "polars_embed.providers.sentence_transformers",
    "polars_embed.providers.hashing",
    "polars_embed.providers.cohere",
    "polars_embed.providers.openai",
)

ProviderLike = str | Provider | Callable[[list[str]], Any] | None
RerankerLike = str | Reranker


@dataclass(frozen=True)
class ProviderEntry:
    """A registered provider: its name, class, and where it came from."""

    name: str
    provider_class: type[Provider]
    origin: str
    registry: Registry = field(repr=False, compare=False)

    def create(self, **options: Any) -> Provider:
        """The provider for these options, the registry's defaults filling those not given
        (references stay unresolved until used).

        Built once and reused: the same options (defaults included) give the same provider,
        with the client, width and model it has set up, while it is among the registry's
        :data:`MAX_BUILT_PROVIDERS` most recently used.
        """
        given = {**self.registry.defaults(self.name), **options}
        return self.registry._built(self.provider_class, given)


class RerankerEntry(ProviderEntry):
    """A registered reranker. It takes those of the registry's defaults for the provider of
    its name that it has options for: Cohere's endpoint and key serve both."""

    def create(self, **options: Any) -> Provider:
        known = {field.name for field in dataclasses.fields(self.provider_class) if field.init}
        defaults = {key: value for key, value in self.registry.defaults(self.name).items() if key in known}
        return self.registry._built(self.provider_class, {**defaults, **options})


class Registry:
    """Providers by name, collected from plugins.

    Parameters
    ----------
    entry_points
        Whether to load third-party plugins from the ``polars_embed`` entry-point group.
    """

    def __init__(self, *, entry_points: bool = True) -> None:
        self._lock = threading.RLock()
        self._entries: dict[str, ProviderEntry] = {}
        self._rerankers: dict[str, ProviderEntry] = {}
        self._broken: dict[str, str] = {}
        self._variables: dict[str, Any] = {}
        self._defaults: dict[str, dict[str, Any]] = {}
        self._providers: OrderedDict[tuple[Hashable, ...], Provider] = OrderedDict()
        self._plugins = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._plugins.add_hookspecs(hookspecs)
        for module in BUILTIN_PLUGINS:
            self.register_plugin(importlib.import_module(module), origin="built-in")
        if entry_points:
            self._load_entry_points()

    def _load_entry_points(self) -> None:
        for entry_point in importlib.metadata.entry_points(group=hookspecs.PROJECT_NAME):
            distribution = entry_point.dist.name if entry_point.dist else entry_point.value
            try:
                plugin = entry_point.load()
                self.register_plugin(plugin, name=entry_point.name, origin=distribution)
            except Exception as error:  # one broken plugin must not take the others down
                self._broken[entry_point.name] = f"{distribution}: {type(error).__name__}: {error}"
                log.warning("polars_embed plugin %r was not loaded: %s", entry_point.name, error)

    def register_plugin(self, plugin: object, *, name: str | None = None, origin: str = "user") -> None:
        """Register a plugin (a module or object with ``@hookimpl`` functions).

        All of its providers and rerankers are added, or none: a taken name is an error.
        """
        with self._lock:
            self._plugins.register(plugin, name=name)
            try:
                entries = self._plugin_entries(plugin, self._plugins.hook.polars_embed_providers, origin)
                rerankers = self._plugin_entries(
                    plugin, self._plugins.hook.polars_embed_rerankers, origin, reranker=True
                )
            except Exception:
                self._plugins.unregister(plugin)
                raise
            self._entries.update((entry.name, entry) for entry in entries)
            self._rerankers.update((entry.name, entry) for entry in rerankers)

    def _plugin_entries(
        self, plugin: object, hook: Any, origin: str, *, reranker: bool = False
    ) -> list[ProviderEntry]:
        entries = [
            self._new_entry(provider_class, origin, reranker=reranker)
            for hookimpl in hook.get_hookimpls()
            if hookimpl.plugin is plugin
            for provider_class in hookimpl.function()
        ]
        names = [entry.name for entry in entries]
        if len(set(names)) < len(names):
            raise DuplicateProviderError(f"plugin {origin} offers a name twice: {names}")
        return entries

    def register(self, provider_class: type[Provider], *, origin: str = "user") -> None:
        """Register one provider class under its ``name``; a taken name is an error."""
        with self._lock:
            entry = self._new_entry(provider_class, origin)
            self._entries[entry.name] = entry

    def register_reranker(self, reranker_class: type[Reranker], *, origin: str = "user") -> None:
        """Register one reranker class under its ``name``; a taken name is an error."""
        with self._lock:
            entry = self._new_entry(reranker_class, origin, reranker=True)
            self._rerankers[entry.name] = entry

    def _new_entry(
        self, provider_class: type[Provider], origin: str, *, reranker: bool = False
    ) -> ProviderEntry:
        base, what = (Reranker, "reranker") if reranker else (Provider, "provider")
        is_reranker = isinstance(provider_class, type) and issubclass(provider_class, Reranker)
        if not (isinstance(provider_class, type) and issubclass(provider_class, base)) or (
            is_reranker and not reranker
        ):
            raise InputTypeError(f"{provider_class!r} is not a polars_embed.{base.__name__} subclass")
        name = provider_class.name
        if not name or ":" in name:
            raise ConfigError(f"{provider_class.__name__} needs a name without ':', got {name!r}")
        existing = (self._rerankers if reranker else self._entries).get(name)
        if existing is not None:
            raise DuplicateProviderError(
                f"{what} name {name!r} is registered twice: by {existing.origin} "
                f"({existing.provider_class.__qualname__}) and by {origin} "
                f"({provider_class.__qualname__})"
            )
        return (RerankerEntry if reranker else ProviderEntry)(name, provider_class, origin, self)

    def _built(self, provider_class: type[Provider], options: dict[str, Any]) -> Provider:
        """The provider of ``provider_class`` with ``options``: the one built before, else a new one."""
        try:
            key = (
                provider_class,
                *sorted(_key_part(provider_class, name, value) for name, value in options.items()),
            )
            hash(key)
        except TypeError:  # a value that cannot be a key (a list, a function): built each time
            return provider_class.create(**options).bind(self)
        with self._lock:
            built = self._providers.get(key)
            if built is not None:
                self._providers.move_to_end(key)
                return built
        provider = provider_class.create(**options).bind(self)
        with self._lock:  # two threads may build it at once: both get the first one kept
            built = self._providers.setdefault(key, provider)
            self._providers.move_to_end(key)
            while len(self._providers) > MAX_BUILT_PROVIDERS:
                self._providers.popitem(last=False)
        return built

    def names(self) -> list[str]:
        """The names of the registered providers, sorted."""
        return sorted(self._entries)

    def reranker_names(self) -> list[str]:
        """The names of the registered rerankers, sorted."""
        return sorted(self._rerankers)

    def get(self, name: str) -> ProviderEntry:
        """The provider registered as ``name``; the error lists what is installed."""
        return self._lookup(self._entries, name, "embedding provider")

    def get_reranker(self, name: str) -> ProviderEntry:
        """The reranker registered as ``name``; the error lists what is installed."""
        return self._lookup(self._rerankers, name, "reranker")

    def _lookup(self, entries: Mapping[str, ProviderEntry], name: str, what: str) -> ProviderEntry:
        entry = entries.get(name)
        if entry is not None:
            return entry
        installed = sorted(entries)
        message = f"no {what} named {name!r}; installed: {', '.join(installed)}"
        close = difflib.get_close_matches(name, installed, n=1)
        if close:
            message += f". Did you mean {close[0]!r}?"
        if self._broken:
            broken = "; ".join(f"{key} ({why})" for key, why in self._broken.items())
            message += f". Plugins that failed to load: {broken}"
        raise UnknownProviderError(message)

    def create(self, spec: str, **options: Any) -> Provider:
        """Build a provider from ``"name"`` or ``"name:model"`` and options."""
        return self.get(_named(spec, options)).create(**options)

    def create_reranker(self, spec: str, **options: Any) -> Reranker:
        """Build a reranker from ``"name"`` or ``"name:model"`` and options."""
        reranker = self.get_reranker(_named(spec, options)).create(**options)
        assert isinstance(reranker, Reranker)  # registered as one
        return reranker

    def configure(self, name: str, **options: Any) -> None:
        """Set the defaults of provider ``name``: where its requests go, which key, how it runs.

        They apply whenever this registry builds that provider, unless an option is
        given: by name (``"openai"``), from a file's description of its vectors, and
        when a pickled provider is unpickled. This is how a file written elsewhere
        is searched with your own endpoint and key, never the file's. The options
        given replace any earlier defaults of ``name``; ``configure(name)`` clears them.
        A reranker of the same name (``"cohere"``) takes those of them it has options
        for, so one endpoint and key serve Cohere's embeddings and reranking.

        Only runtime and secret options can be defaults: an identity option changes
        the vectors, so it belongs where a provider is built, and a code-only one
        (``trust_remote_code``) would reach every model a file names.

        Examples
        --------
        >>> registry = Registry(entry_points=False)
        >>> registry.configure("openai", base_url="http://localhost:11434/v1", api_key="$env:TEAM_KEY")
        >>> registry.create("openai:nomic-embed-text").base_url
        'http://localhost:11434/v1'
        >>> registry.configure("openai")  # back to OpenAI's own service and OPENAI_API_KEY
        """
        provider_class = self.get(name).provider_class
        check_known(provider_class, options)
        for key, value in options.items():
            role = option_role(provider_class, key)
            if role in ("identity", "code_only"):
                kind = "an identity option (it changes the vectors)" if role == "identity" else "code-only"
                raise ConfigError(
                    f"option {key!r} of provider {name!r} is {kind}, so it cannot be a registry default; "
                    "pass it where the provider is built"
                )
            check_option(provider_class, key, value)
        with self._lock:
            if options:
                self._defaults[name] = dict(options)
            else:
                self._defaults.pop(name, None)

    def defaults(self, name: str) -> Mapping[str, Any]:
        """The defaults set for provider ``name`` with :meth:`configure`."""
        return MappingProxyType(self._defaults.get(name, {}))

    @property
    def variables(self) -> Mapping[str, Any]:
        """Registry variables, read by ``"$var:name"`` references."""
        return self._variables

    def set_var(self, name: str, value: Any) -> None:
        """Set a variable that options can reference as ``"$var:name"``."""
        with self._lock:
            self._variables[name] = value

    def get_var(self, name: str, default: Any = None) -> Any:
        """The value of a registry variable."""
        return self._variables.get(name, default)


def _key_part(provider_class: type[Provider], name: str, value: Any) -> tuple[str, str, Any]:
    """Option ``name`` as part of a built provider's key: with the value's type, since
    ``True == 1`` but ``batch_size=True`` is refused, and a secret (a reference too, whose
    default may be one) by its salted digest."""
    if value is not None and option_role(provider_class, name) == "secret":
        value = secret_digest(value)
    return name, type(value).__name__, value


def _named(spec: str, options: dict[str, Any]) -> str:
    """The name in ``"name:model"``; the model goes into ``options``."""
    name, _, model = spec.partition(":")
    if model:
        if "model" in options and options["model"] != model:
            raise ConfigError(f"{spec!r} names model {model!r} but model={options['model']!r}")
        options["model"] = model
    return name


_default_registry: Registry | None = None
_default_lock = threading.Lock()


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _default_registry
    if _default_registry is None:
        with _default_lock:
            if _default_registry is None:
                _default_registry = Registry()
    return _default_registry


def rebuild_provider(provider_class: type[Provider], options: dict[str, Any]) -> Provider:
    """A provider unpickled: built by this process's registry, whose defaults fill the
    options not given, when it knows the class; else by the class itself."""
    registry = get_registry()
    entry = registry._entries.get(provider_class.name)
    if entry is not None and entry.provider_class is provider_class:
        return entry.create(**options)
    return provider_class.create(**options).bind(registry)


def list_providers() -> list[str]:
    """The names of the installed providers."""
    return get_registry().names()


def list_rerankers() -> list[str]:
    """The names of the installed rerankers."""
    return get_registry().reranker_names()


def resolve_reranker(reranker: RerankerLike, **options: Any) -> Reranker:
    """Turn a ``"name"`` or ``"name:model"`` string, or a :class:`Reranker`, into a reranker."""
    if isinstance(reranker, str):
        return get_registry().create_reranker(reranker, **options)
    if isinstance(reranker, Reranker):
        return reranker.with_options(**options)  # type: ignore[return-value]
    raise InputTypeError(
        f"rerank= takes a reranker's name, a 'name:model' string or a Reranker; got {type(reranker).__name__}"
    )


def resolve_provider(provider: ProviderLike = None, **options: Any) -> Provider:
    """Turn anything accepted as a provider into a :class:`Provider`.

    ``None`` is the default local model; a string is ``"name"`` or ``"name:model"``;
    a :class:`Provider` is used as is (with ``options`` applied); any other
    callable is wrapped as a :class:`CallableProvider`.
    """
    if provider is None:
        provider = DEFAULT_PROVIDER
    if isinstance(provider, str):
        return get_registry().create(provider, **options)
    if isinstance(provider, Reranker):
        raise provider._not_a_provider()
    if isinstance(provider, Provider):
        return provider.with_options(**options)
    if callable(provider):
        return CallableProvider.create(function=provider, **options)
    raise InputTypeError(
        f"provider must be a name, a 'name:model' string, a Provider or a callable; "
        f"got {type(provider).__name__}"
    )
