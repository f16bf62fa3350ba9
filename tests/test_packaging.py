"""The wheel's layout, as declared in pyproject.toml: smml_jax only, every subpackage, CLIs inside."""

import importlib
import tomllib

from conftest import REPO_ROOT


def _setuptools():
  return tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())


def test_every_smml_jax_package_is_in_the_wheel_and_nothing_else_is_top_level():
  config = _setuptools()
  listed = set(config["tool"]["setuptools"]["packages"])
  mapped = config["tool"]["setuptools"]["package-dir"]
  on_disk = {".".join(p.parent.relative_to(REPO_ROOT).parts) for p in (REPO_ROOT / "smml_jax").rglob("__init__.py")}
  on_disk |= {name for name, folder in mapped.items() if (REPO_ROOT / folder / "__init__.py").is_file()}
  assert listed == on_disk, f"pyproject packages differ from the tree: {sorted(listed ^ on_disk)}"
  assert {name.split(".")[0] for name in listed} == {"smml_jax"}
  for name, folder in mapped.items():
    assert (REPO_ROOT / folder).is_dir(), f"package-dir {name} -> {folder}: no such folder"


def test_console_scripts_name_main_functions_of_the_mapped_folders():
  config = _setuptools()
  mapped = config["tool"]["setuptools"]["package-dir"]
  scripts = config["project"]["scripts"]
  assert set(scripts) == {"smml-run", "smml-compare", "smml-predict", "smml-report", "smml-bench"}
  for script, target in scripts.items():
    module, function = target.split(":")
    package, _, leaf = module.rpartition(".")
    folder = mapped[package]  # installed name -> the repository folder it is built from
    source = importlib.import_module(f"{folder}.{leaf}")
    assert callable(getattr(source, function)), f"{script}: {target} is not callable"
  data = config["tool"]["setuptools"]["package-data"]["smml_jax.experiments"]
  assert data == ["configs/*.yaml"] and list((REPO_ROOT / "experiments" / "configs").glob("*.yaml"))
