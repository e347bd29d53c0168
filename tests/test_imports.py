"""The one-way import rule: runtime is the floor (no torch, no export), CLIs' --help stay light.
Modules are discovered with pkgutil over the installed packages, so a new module is checked too."""
import pkgutil
import subprocess
import sys

import pytest

import dsocr.calibration
import dsocr.runtime

HEAVY = ("torch", "tensorrt")


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def modules_of(package) -> list[str]:
    """Every module and subpackage of `package` (its own name first), `__main__` modules left out."""
    found = [package.__name__] + [m.name for m in pkgutil.walk_packages(package.__path__, package.__name__ + ".")]
    return sorted(m for m in found if not m.endswith(".__main__"))


def _loaded_after_importing(modules: list[str], forbidden: tuple[str, ...]) -> list[str]:
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + (
        f"bad = sorted(m for m in sys.modules if m in {forbidden!r} or m.startswith({tuple(f + '.' for f in forbidden)!r}))\n"
        "print(','.join(bad))"
    )
    return [m for m in _run(code).strip().split(",") if m]


def test_discovery_finds_the_known_modules():
    mods = modules_of(dsocr.runtime)
    assert {"dsocr.runtime.pipeline", "dsocr.runtime.backends.ort", "dsocr.runtime.capi.bridge"} <= set(mods)
    assert len(mods) > 20
    assert "dsocr.calibration.precision" in modules_of(dsocr.calibration)


def test_runtime_imports_neither_torch_nor_export():
    assert _loaded_after_importing(modules_of(dsocr.runtime), HEAVY + ("dsocr.export", "dsocr.calibration",
                                                                       "dsocr.engines")) == []


def test_calibration_imports_neither_torch_nor_export_or_engines():
    assert _loaded_after_importing(modules_of(dsocr.calibration), HEAVY + ("dsocr.export", "dsocr.engines")) == []


def test_engines_import_no_torch():
    import dsocr.engines

    assert _loaded_after_importing(modules_of(dsocr.engines), HEAVY + ("dsocr.export",)) == []


@pytest.mark.parametrize("module", ["dsocr.export.cli", "dsocr.runtime.cli", "dsocr.engines.__main__"])
def test_cli_help_does_not_import_torch(module):
    code = (
        "import sys\nfrom click.testing import CliRunner\n"
        f"from {module} import main\n"
        "r = CliRunner().invoke(main, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "assert main.commands, 'no subcommands'\n"
        "for name in list(main.commands):\n"
        "    r = CliRunner().invoke(main, [name, '--help'])\n    assert r.exit_code == 0, (name, r.output)\n"
        "print('torch' in sys.modules, 'tensorrt' in sys.modules)"
    )
    assert _run(code).strip() == "False False"
