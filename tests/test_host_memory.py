"""Host memory: the glibc tunables, when scripts restart under them, and that they cut the page
faults of a step's fresh scratch buffer."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from trady_jax import host_memory

needs_glibc = pytest.mark.skipif(not host_memory.supported(), reason="glibc tunables: Linux only")
THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_possible() -> bool:
  """Transparent huge pages in 'always' or 'madvise' mode (what ``hugetlb=1`` asks for)."""
  try:
    with open(THP) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def test_merged_keeps_the_users_settings_and_adds_the_missing_ones():
  assert host_memory.merged("") == "glibc.malloc.hugetlb=1"
  assert host_memory.merged("glibc.malloc.arena_max=4") == (
      "glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1")
  assert host_memory.merged("glibc.malloc.hugetlb=0") == "glibc.malloc.hugetlb=0"
  assert host_memory.parse(host_memory.merged("a=1:b=")) == {"a": "1", "b": "",
                                                              **host_memory.TUNABLES}


def test_mode_rejects_unknown_values():
  assert host_memory.mode({}) == "tuned"
  assert host_memory.mode({host_memory.ENV: "default"}) == "default"
  with pytest.raises(ValueError, match="TRADY_JAX_HOST_MEMORY='huge'"):
    host_memory.mode({host_memory.ENV: "huge"})


def test_reexec_never_restarts_an_interactive_session(monkeypatch):
  calls = []
  monkeypatch.setattr(host_memory, "supported", lambda: True)
  monkeypatch.setattr(os, "execve", lambda *a: calls.append(a))
  monkeypatch.setattr("builtins.__IPYTHON__", True, raising=False)  # what IPython / Jupyter set
  host_memory.reexec_with_tunables({})
  assert not calls


@pytest.mark.parametrize("environ, restarts", [
    ({}, True),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, True),
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, False),   # already running under them
    ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, False),   # the user's own choice
    ({host_memory.ENV: "default"}, False),
])
def test_reexec_restarts_only_when_the_tunables_are_missing(monkeypatch, environ, restarts):
  calls = []
  monkeypatch.setattr(host_memory, "supported", lambda: True)
  monkeypatch.setattr(os, "execve", lambda path, argv, env: calls.append((path, argv, env)))
  monkeypatch.delattr(sys, "ps1", raising=False)
  monkeypatch.delattr("builtins.__IPYTHON__", raising=False)
  monkeypatch.setattr(sys, "orig_argv", ["python", "-m", "some.script", "--flag"])
  host_memory.reexec_with_tunables(dict(environ))
  assert bool(calls) == restarts
  if restarts:
    path, argv, env = calls[0]
    assert path == sys.executable and argv == [sys.executable, "-m", "some.script", "--flag"]
    assert host_memory.active(env)
    assert host_memory.parse(env["GLIBC_TUNABLES"]).items() >= host_memory.parse(
        environ.get("GLIBC_TUNABLES", "")).items()


# A jitted function whose compiled temp buffer is far above glibc's 32 MiB mmap threshold: each
# call gets that buffer fresh; the script restarts itself under the tunables unless told not to.
SCRIPT = textwrap.dedent("""
    import json, sys
    from trady_jax import host_memory
    host_memory.reexec_with_tunables()
    import jax, jax.numpy as jnp
    from trady_jax import xla
    f = jax.jit(lambda x: jnp.sum(jnp.sin(jnp.cumsum(x * 2.0, axis=0)), axis=0))
    x = jnp.ones((512, 64 * 1024), jnp.float32)  # 128 MiB
    temp = xla.compiled_stats(f, x)["temp_bytes"]
    for _ in range(2):
      f(x).block_until_ready()
    before = host_memory.minor_faults()
    for _ in range(4):
      f(x).block_until_ready()
    print(json.dumps({"faults": (host_memory.minor_faults() - before) / 4, "temp": temp,
                      "active": host_memory.active()}))
""")


@needs_glibc
def test_scripts_restart_under_the_tunables_and_fault_far_fewer_pages(tmp_path):
  script = tmp_path / "step.py"
  script.write_text(SCRIPT)
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.ENV)}

  def run(**extra):
    out = subprocess.run([sys.executable, str(script)], env={**env, **extra}, check=True,
                         capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])

  plain = run(**{host_memory.ENV: "default"})
  tuned = run()
  assert not plain["active"] and tuned["active"]
  pages = plain["temp"] / 4096
  assert plain["temp"] > 64 * 2**20
  assert plain["faults"] > 0.5 * pages, plain  # a fresh buffer at every call, page by page
  if not huge_pages_possible():
    pytest.skip(f"transparent huge pages are off here ({THP})")
  assert tuned["faults"] < 0.1 * plain["faults"], (plain, tuned)
