"""The method registry: every method class that users can name in a config, added by :func:`registered`.

A method becomes known to the CLI (``--model ProtoNet``), to its error messages and to the tests over every method
(``tests/method_zoo.py``, ``tests/test_method_registry.py``) by decorating its class; there is no list to keep in
step by hand, and a test fails if the package's ``__all__`` or the test zoo misses a registered method.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from fsl_lightning.methods.base import FewShotMethod

MethodClass = TypeVar("MethodClass", bound="type[FewShotMethod]")

#: short name (the class's name) -> class; filled as the method modules are imported by ``fsl_lightning.methods``
METHODS: dict[str, type[FewShotMethod]] = {}


def registered(method: MethodClass) -> MethodClass:
    """Class decorator: registers a method under its class name (which must be new)."""
    name = method.__name__
    if METHODS.get(name, method) is not method:
        raise ValueError(f"Two methods are named {name}: {METHODS[name].__module__} and {method.__module__}.")
    METHODS[name] = method
    return method
