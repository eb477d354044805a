"""jnas.cpu_env: the XLA flag and the huge-page malloc re-exec of the commands."""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from jnas import cpu_env

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_apply_xla_flags_appends_once_and_respects_opt_out():
  env = {"XLA_FLAGS": "--xla_foo=1"}
  cpu_env.apply_xla_flags(env)
  cpu_env.apply_xla_flags(env)
  assert env["XLA_FLAGS"] == "--xla_foo=1 " + cpu_env.XLA_CPU_FLAG
  env = {"JNAS_KEEP_XLA_FLAGS": "1"}
  cpu_env.apply_xla_flags(env)
  assert "XLA_FLAGS" not in env


def test_tuned_environ_keeps_other_tunables():
  env = cpu_env.tuned_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2", "PATH": "/bin"})
  assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:" + cpu_env.MALLOC_TUNABLE
  assert env["PATH"] == "/bin"
  assert cpu_env.tuned_environ({})["GLIBC_TUNABLES"] == cpu_env.MALLOC_TUNABLE
  assert cpu_env.hugepage_malloc_active(env)


@pytest.mark.parametrize("text, mode", [("always [madvise] never\n", "madvise"), ("[always] madvise never", "always"),
                                        ("always madvise [never]", "never"), ("garbage", None)])
def test_transparent_hugepages_mode(tmp_path, text, mode):
  path = tmp_path / "enabled"
  path.write_text(text)
  assert cpu_env.transparent_hugepages_mode(str(path)) == mode
  assert cpu_env.transparent_hugepages_mode(str(tmp_path / "missing")) is None


def _package(tmp_path, skip=()):
  """A package whose __init__ re-executes like experiments/ and benchmarks/ do."""
  pkg = tmp_path / "pkg"
  pkg.mkdir()
  (pkg / "__init__.py").write_text(textwrap.dedent(f"""
      import importlib.util
      spec = importlib.util.spec_from_file_location("_cpu_env", {str(REPO / "jnas" / "cpu_env.py")!r})
      mod = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(mod)
      mod.reexec_with_hugepages(skip={skip!r})
      """))
  (pkg / "show.py").write_text("import os, sys\nprint(os.environ.get('GLIBC_TUNABLES', ''), sys.argv[1:])\n")


def _clean_env(**extra):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "JNAS_REEXECUTED", "JNAS_NO_HUGEPAGES")}
  return {**env, **extra}


def _run(tmp_path, env_extra=None):
  out = subprocess.run([sys.executable, "-m", "pkg.show", "a", "--b"], cwd=tmp_path, env=_clean_env(**(env_extra or {})),
                       capture_output=True, text=True, check=True)
  return out.stdout.strip()


@pytest.mark.skipif(not cpu_env.hugepages_available({}), reason="no glibc >= 2.35 with THP in madvise mode")
def test_python_m_reexecutes_once_with_hugepages(tmp_path):
  _package(tmp_path)
  assert _run(tmp_path) == cpu_env.MALLOC_TUNABLE + " ['a', '--b']"
  assert _run(tmp_path, {"JNAS_NO_HUGEPAGES": "1"}) == "['a', '--b']"


def test_skipped_module_and_imports_do_not_reexecute(tmp_path):
  _package(tmp_path, skip=("pkg.show",))
  assert _run(tmp_path) == "['a', '--b']"
  # Imported (not run with -m), the package leaves the process alone.
  out = subprocess.run([sys.executable, "-c", "import os, pkg; print(os.environ.get('JNAS_REEXECUTED', 'no'))"],
                       cwd=tmp_path, env=_clean_env(), capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "no"
