import subprocess
import sys

from companion.check import CHECK_ENVS, check_env, check_envs, env_table, versions


def test_every_family_steps():
    checks = check_envs()
    assert [c.env_id for c in checks] == list(CHECK_ENVS)
    assert all(c.ok for c in checks), env_table(checks)
    assert checks[0].obs_shape == (210, 160, 3) and checks[0].n_actions == 18


def test_a_failing_env_is_reported_not_raised():
    check = check_env("NoSuchEnv-v9")
    assert not check.ok
    assert "unknown env id" in check.error
    table = env_table([check])
    assert "FAILED" in table and "NoSuchEnv-v9: ValueError" in table


def test_versions_lists_the_stack():
    info = versions()
    assert {"python", "torch", "device", "gymnasium", "ale-py", "budget"} <= set(info)


def test_cli_check_and_bad_budget(monkeypatch):
    ok = subprocess.run([sys.executable, "-m", "companion", "check"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "MinAtar/Breakout-v1" in ok.stdout and "FAILED" not in ok.stdout
    env = {**__import__("os").environ, "COMPANION_BUDGET": "fast"}
    bad = subprocess.run([sys.executable, "-m", "companion", "check"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0
    assert "valid budgets are: quick, book, full" in bad.stderr
