import dataclasses

import pytest

from catdog import options


def test_option_kinds_follow_the_default_or_say_what_is_missing():
    @dataclasses.dataclass
    class Section:
        a: int = options.option(3, "An integer option.")
        b: bool = options.option(True, "A boolean option.")
        c: float = options.option(0.5, "A float option.")
        d: str = options.option("x", "An enum option.", choices=("x", "y"))
        e: str = options.option("", "A string option.", flag_default=None)

    @dataclasses.dataclass
    class Whole:
        data: Section = dataclasses.field(default_factory=Section)

    specs = {s.flag: s for s in options.flag_specs(Whole())}
    assert [(s.kind, s.flag_default) for s in specs.values()] == [
        ("integer", 3), ("boolean", True), ("float", 0.5), ("enum", "x"), ("string", None)]
    assert specs["d"].choices == ("x", "y")
    with pytest.raises(TypeError, match="kind="):
        options.option(None, "No type to take the kind from.")
    with pytest.raises(TypeError, match="choices="):
        options.option("x", "Choices without an enum.", kind="string", choices=("x",))
