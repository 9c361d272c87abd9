"""``runtime.first_result``: a firstresult hook as a plain function, answering as pluggy does."""

from __future__ import annotations

from typing import Any

import pluggy
import pytest

from apimodels.providers.runtime import first_result

spec = pluggy.HookspecMarker("demo")
impl = pluggy.HookimplMarker("demo")


class Specs:
    @spec(firstresult=True)
    def answer(self, x: int, y: int) -> Any: ...

    @spec
    def collect(self, x: int) -> Any: ...


def manager(*plugins: object) -> pluggy.PluginManager:
    pm = pluggy.PluginManager("demo")
    pm.add_hookspecs(Specs)
    for plugin in plugins:
        pm.register(plugin)
    return pm


class Fallback:
    @impl(trylast=True)
    def answer(self, x: int, y: int) -> Any:
        return ("fallback", x, y)


class Picky:  # answers only some calls, and takes only the argument it needs
    @impl
    def answer(self, y: int) -> Any:
        return ("picky", y) if y > 0 else None


class Early:
    @impl(tryfirst=True)
    def answer(self, x: int) -> Any:
        return ("early", x) if x == 7 else None


class Wrapping:
    @impl(wrapper=True)
    def answer(self, x: int, y: int) -> Any:
        return (yield)


def test_same_answers_in_the_same_order_as_pluggy() -> None:
    pm = manager(Early(), Fallback(), Picky())
    fast = first_result(pm.hook.answer)
    assert fast is not pm.hook.answer
    for x, y in [(1, 2), (1, 0), (7, 0), (7, 5), (0, -1)]:
        assert fast(x=x, y=y) == pm.hook.answer(x=x, y=y)
    assert fast(x=1, y=0) == ("fallback", 1, 0)
    assert fast(x=7, y=5) == ("early", 7)


def test_none_when_nobody_answers() -> None:
    pm = manager(Picky())
    assert first_result(pm.hook.answer)(x=1, y=0) is None


class Defaulted:  # takes an argument only when the call provides it: pluggy's job
    @impl
    def answer(self, x: int, y: int = -1) -> Any:
        return ("defaulted", x, y)


def test_wrappers_defaults_and_collecting_hooks_keep_pluggys_caller() -> None:
    pm = manager(Fallback(), Wrapping())
    assert first_result(pm.hook.answer) is pm.hook.answer
    assert first_result(pm.hook.collect) is pm.hook.collect
    pm = manager(Fallback(), Defaulted())
    assert first_result(pm.hook.answer) is pm.hook.answer
    assert pm.hook.answer(x=1, y=2) == ("defaulted", 1, 2)


def test_a_missing_argument_is_pluggys_error() -> None:
    fast = first_result(manager(Fallback()).hook.answer)
    with pytest.raises(pluggy.HookCallError, match="'y'"):
        fast(x=1)
