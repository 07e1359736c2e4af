"""The suite relies on `xdist_group` to serialise timer, service-control and perf tests.

pytest 9 silently broke that with pytest-xdist 3.8 (the `@group` suffix never reached the node id),
so this self-test runs a toy module under xdist and checks a group really lands on one worker.
"""
import subprocess
import sys
import textwrap


def test_tests_of_one_xdist_group_run_on_one_worker(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --dist loadgroup\n")
    (tmp_path / "test_toy.py").write_text(textwrap.dedent("""
        import os, pytest

        @pytest.mark.xdist_group("together")
        @pytest.mark.parametrize("i", range(4))
        def test_grouped(i):
            with open(os.path.join(os.path.dirname(__file__), f"ran-{i}"), "w") as f:
                f.write(os.environ["PYTEST_XDIST_WORKER"])
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-n", "3", "-q", "-p", "no:cacheprovider",
                           str(tmp_path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    workers = {(tmp_path / f"ran-{i}").read_text() for i in range(4)}
    assert len(workers) == 1, f"xdist_group 'together' was spread over workers {sorted(workers)}"
