"""The README's layer example is real code: it runs and passes check_layer."""

import re

from tests.cli import ROOT


def test_readme_layer_example_passes_check_layer(capsys):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = next(b for b in blocks if "class PReLU" in b)
    assert 25 <= len(example.splitlines()) <= 45
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "gradients (finite differences, float64)" in out and "backend numba" in out
    import horn
    from horn.registry import resolve
    assert resolve("prelu") is namespace["PReLU"]
    assert horn.check_layer(namespace["PReLU"](slope=0.1))
