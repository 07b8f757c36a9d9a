"""Hostile programs against ``reward=code`` end to end (CodeReward + score_safely, as a loop
calls it): every attack is contained, scores 0 on tests whose expected output is a secret it
would have to steal, leaves the trainer (this process, and a sentinel child of it) alive, and
costs the trainer bounded memory.

The suite runs twice: from the repository's interpreter, and (``test_suite_from_an_
interpreter_under_tmp``) from a venv under /tmp with rltrain copied into its site-packages,
the layout in which the old sandbox silently fell back to uncontained process isolation.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import tracemalloc
import uuid

import pytest

import rltrain
from rltrain.rewards.base import score_safely
from rltrain.rewards.code import CodeReward
from rltrain.types import Sample
from sandbox_support import NAMESPACE_UNSUPPORTED, uid_processes

INNER = os.environ.get("RLTRAIN_ADVERSARIAL_INNER") == "1"
PROJECT = os.environ.get("RLTRAIN_PROJECT_ROOT") or os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
SECRET = f"rltrain-secret-{uuid.uuid4().hex}"  # in this process's memory and environment
TOKEN = uuid.uuid4().hex[:12]  # names of files the attacks try to plant
FILE_MB = 2
MEMORY_BOUND = 24 * 1024 * 1024  # trainer-side Python allocation peak per attack, bytes


def _make_reward(num_workers: int = 2) -> CodeReward:
    if NAMESPACE_UNSUPPORTED is not None:
        pytest.skip(f"namespace isolation cannot run on this machine: {NAMESPACE_UNSUPPORTED}")
    reward = CodeReward(timeout=1.0, program_timeout=10.0, memory_mb=256, file_mb=FILE_MB, max_processes=8,
                        num_workers=num_workers, isolation="auto")
    assert reward.sandbox.isolation == "namespace"  # auto = a jail, whatever the layout
    return reward


@pytest.fixture(scope="module")
def reward():
    os.environ["RLTRAIN_ADVERSARIAL_SECRET"] = SECRET
    made = _make_reward()
    yield made
    made.close()
    os.environ.pop("RLTRAIN_ADVERSARIAL_SECRET", None)


@pytest.fixture(scope="module")
def sentinel():
    """A child of the trainer that attacks try to kill."""
    proc = subprocess.Popen(["sleep", "600"])
    yield proc
    proc.kill()
    proc.wait()


def attack(reward, sentinel, code: str, n_tests: int = 1, expected=None, fn_name=None):
    """Score ``code`` on ``n_tests`` tests; check it scored 0, the trainer lives and its memory
    stayed bounded. Returns the reward output."""
    io = {"inputs": [[] if fn_name else ""] * n_tests, "outputs": [expected or SECRET] * n_tests}
    if fn_name:
        io["fn_name"] = fn_name
    sample = Sample(id="adv", question="", meta={"input_output": io})
    tracemalloc.start()
    try:
        out = score_safely(reward, [sample], [f"```python\n{textwrap.dedent(code)}\n```"], max_fail_fraction=1.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.scores == [0.0], out.info
    assert out.info["failed"] == [False], out.info["error"]  # a wrong program, not a broken reward
    assert peak < MEMORY_BOUND, f"trainer allocated {peak / 2**20:.0f} MiB for one program"
    assert sentinel.poll() is None, "the trainer's child was killed"
    assert uid_processes(range(reward.sandbox.uid_base, reward.sandbox.uid_base + reward.sandbox.num_workers)) == []
    return out


def stdout_of(reward, code: str) -> str:
    """What a benign-looking program prints (one test, expected output irrelevant)."""
    run = reward.sandbox.run(textwrap.dedent(code), [""])
    assert run.compile_error is None and run.tests[0].status == "ok", run
    return run.tests[0].text


def test_this_layout(reward):
    """Inner run: rltrain and site-packages really lie under /tmp (the old fallback layout)."""
    import site

    if INNER:
        assert os.path.realpath(rltrain.__file__).startswith(os.path.realpath(tempfile.gettempdir()) + "/")
        assert any(p.startswith("/tmp/") for p in site.getsitepackages())
    assert reward.sandbox.isolation == "namespace"


def test_writes_outside_the_work_dir(reward, sentinel):
    import site

    targets = [
        os.path.join(PROJECT, "rltrain", f"pwned_{TOKEN}.py"), os.path.join(PROJECT, f"pwned_{TOKEN}"),
        os.path.join(os.path.dirname(rltrain.__file__), f"pwned_{TOKEN}.py"),
        *[os.path.join(p, f"pwned_{TOKEN}.pth") for p in site.getsitepackages()],
        f"/tmp/pwned_{TOKEN}", f"/dev/shm/pwned_{TOKEN}", f"/var/tmp/pwned_{TOKEN}", f"/root/pwned_{TOKEN}",
    ]
    code = f"""
    import os
    for path in {targets!r}:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as fh:
                fh.write("import os; os.system('touch /tmp/owned')\\n")
        except OSError:
            pass
    print("done")
    """
    attack(reward, sentinel, code)
    assert [t for t in targets if os.path.exists(t)] == []
    # The jail's own /tmp and work dir are writable, but nothing of them reaches the next program.
    assert stdout_of(reward, f"open('/tmp/x{TOKEN}', 'w').write('1'); open('y{TOKEN}', 'w').write('1'); print('ok')") == "ok\n"
    # (root-owned entries of the jail's /tmp are mount points of paths the plan binds there)
    leftovers = (f"import os\nprint(os.path.exists('/tmp/x{TOKEN}'), os.listdir('.'), "
                 "[n for n in os.listdir('/tmp') if os.stat('/tmp/' + n).st_uid != 0])")
    for _ in range(2):  # both slots
        assert stdout_of(reward, leftovers) == "False [] []\n"
    assert not os.path.exists(f"/tmp/x{TOKEN}")


def test_proc_memory_environment_and_secrets_are_out_of_reach(reward, sentinel):
    code = f"""
    import ctypes, os, re
    found = []
    found.append(os.environ.get("RLTRAIN_ADVERSARIAL_SECRET"))
    for pid in ({os.getpid()}, {os.getppid()}, 1, "self"):
        for name in ("environ", "cmdline"):
            try:
                found.append(open(f"/proc/{{pid}}/{{name}}", "rb").read().decode(errors="replace"))
            except OSError:
                pass
        try:
            maps = open(f"/proc/{{pid}}/maps").read().splitlines()
            mem = open(f"/proc/{{pid}}/mem", "rb")
            for line in maps:
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                try:
                    mem.seek(lo); found.append(mem.read(hi - lo).decode("latin-1"))
                except (OSError, ValueError, OverflowError):
                    pass
        except OSError:
            pass
    for path in ("/etc/shadow", "/etc/passwd", "/root/.bash_history"):
        try:
            found.append(open(path).read())
        except OSError:
            pass
    libc = ctypes.CDLL(None, use_errno=True)
    os.makedirs("/tmp/p", exist_ok=True)
    mounted = libc.mount(b"proc", b"/tmp/p", b"proc", 0, None) == 0
    if mounted:
        found += [open(f"/tmp/p/{{p}}/environ", "rb").read().decode(errors="replace") for p in os.listdir("/tmp/p") if p.isdigit()]
    hit = [m.group() for f in found if f for m in re.finditer(r"rltrain-secret-[0-9a-f]{{32}}", f)]
    print(hit[0] if hit else "nothing", mounted)
    """
    out = attack(reward, sentinel, code)
    assert out.info["code/status"] == ["wrong_answer"]


def test_signals_and_ptrace_cannot_reach_the_trainer(reward, sentinel):
    code = f"""
    import ctypes, os, signal
    libc = ctypes.CDLL(None, use_errno=True)
    for pid in ({os.getpid()}, {sentinel.pid}, {os.getppid()}, os.getppid(), 1, -1):
        for sig in (signal.SIGKILL, signal.SIGTERM, signal.SIGSTOP):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        libc.ptrace(16, pid, None, None)  # PTRACE_ATTACH
        libc.ptrace(0x4206, pid, None, None)  # PTRACE_SEIZE
    print("survived")
    """
    attack(reward, sentinel, code)
    os.kill(os.getpid(), 0)
    assert stdout_of(reward, "print(1)") == "1\n"


def test_network_is_unreachable(reward, sentinel):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.setblocking(False)
    abstract = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    abstract.bind(f"\0rltrain-adv-{TOKEN}")
    abstract.listen(4)
    abstract.setblocking(False)
    code = f"""
    import socket
    for family, address in ((socket.AF_INET, ("127.0.0.1", {listener.getsockname()[1]})),
                            (socket.AF_UNIX, "\\0rltrain-adv-{TOKEN}"), (socket.AF_INET, ("1.1.1.1", 53))):
        try:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(0.5)
            s.connect(address)
            s.sendall(b"leak")
            print("connected", address)
        except OSError:
            pass
    print("done")
    """
    try:
        attack(reward, sentinel, code)
        for sock in (listener, abstract):
            with pytest.raises(BlockingIOError):
                sock.accept()
    finally:
        listener.close()
        abstract.close()


def test_daemons_do_not_outlive_the_program(reward, sentinel):
    code = f"""
    import os, time
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            time.sleep(1.5)
            for path in ("/tmp/daemon_{TOKEN}", "/sandbox/daemon_{TOKEN}"):
                try:
                    open(path, "w").write("alive")
                except OSError:
                    pass
            os._exit(0)
        os._exit(0)
    time.sleep(0.05)
    print("parent done")
    """
    attack(reward, sentinel, code)  # checks no process of the jail uids is left
    time.sleep(1.7)
    assert not os.path.exists(f"/tmp/daemon_{TOKEN}")
    assert stdout_of(reward, f"import os\nprint(os.path.exists('/tmp/daemon_{TOKEN}'))") == "False\n"


@pytest.mark.parametrize("bomb", [
    "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass",
    "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(60,)).start()",
    "x = []\nwhile True:\n    x.append(bytearray(1 << 24))",
    "n = 0\ntry:\n    while True:\n        open('/dev/null'); n += 1\nexcept OSError:\n    pass\nprint(n)\nassert n < 300",
    "import os\nfor d in ('/sandbox', '/tmp'):\n    with open(d + '/fill', 'wb') as fh:\n        try:\n            while True:\n"
    "                fh.write(b'x' * (1 << 20)); fh.flush()\n        except OSError:\n            pass\n"
    "print(os.statvfs('/tmp').f_blocks * os.statvfs('/tmp').f_frsize // 2**20)",
], ids=["fork", "thread", "memory", "fd", "disk"])
def test_bombs_are_contained(reward, sentinel, bomb):
    attack(reward, sentinel, bomb, n_tests=2)
    assert stdout_of(reward, "print('fine')") == "fine\n"


def test_output_flood_across_many_tests_is_capped(reward, sentinel):
    # Each of 20 tests writes just under file_mb of bytes that are not UTF-8 (the old
    # sandbox kept ~6 bytes per byte, per test, in the trainer).
    code = f"import sys\nsys.stdout.buffer.write(b'\\xff' * ({FILE_MB} * 2**20 - 4096))"
    out = attack(reward, sentinel, code, n_tests=20)
    assert out.info["code/output_truncated"] == [True]
    assert out.info["code/output_bytes"][0] <= FILE_MB * 2**20
    # pass_rate runs every test: the flood costs no more.
    flood = CodeReward(mode="pass_rate", timeout=1.0, file_mb=FILE_MB, num_workers=1, isolation="auto")
    try:
        attack(flood, sentinel, code, n_tests=20)
    finally:
        flood.close()


def test_huge_and_malformed_numbers_are_wrong_answers(reward, sentinel):
    attack(reward, sentinel, "print('9' * 200000)", expected="5")
    attack(reward, sentinel, "print('-' + '0' * 100000 + '5')", expected="5")
    attack(reward, sentinel, "print('1_0')", expected="10")
    attack(reward, sentinel, "print('1' * 5000 + '.5e99999999999')", expected="5")
    # ...and a right one of any length still passes.
    big = "7" * 6000
    sample = Sample(id="big", question="", meta={"input_output": {"inputs": [""], "outputs": [big + "\n"]}})
    assert reward([sample], [f"```python\nprint('0' + '7' * 6000)\n```"]).scores == [1.0]


def test_deep_or_forged_json_is_a_wrong_answer(reward, sentinel):
    deep = "[" * 100000 + "]" * 100000
    forged = f"""
    import os
    def f():
        for fd in range(3, 64):
            try:
                os.lseek(fd, 0, 0); os.write(fd, b{deep!r})
            except OSError:
                pass
        os._exit(0)
    """
    attack(reward, sentinel, forged, expected=[[1]], fn_name="f")
    nested = """
    def f():
        x = []
        for _ in range(100000):
            x = [x]
        return x
    """
    attack(reward, sentinel, nested, expected=[[1]], fn_name="f")
    attack(reward, sentinel, "def f():\n    return int('9' * 4000) ** 3", expected=[5], fn_name="f")


def test_keyrings_carry_nothing_to_the_next_program(sentinel):
    one_slot = _make_reward(num_workers=1)
    plant = f"""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    for ring in (-4, -5, -3):  # user, user session, session keyring
        libc.syscall(248, b"user", b"rltrain-{TOKEN}", b"{SECRET}", {len(SECRET)}, ring)  # add_key
    print("planted")
    """
    read = f"""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)
    for ring in (-4, -5, -3):
        key = libc.syscall(250, 10, ring, b"user", b"rltrain-{TOKEN}", 0)  # KEYCTL_SEARCH
        if key > 0:
            n = libc.syscall(250, 11, key, buf, 256)  # KEYCTL_READ
            print(buf.raw[:n].decode())
            break
    else:
        print("no key")
    """
    try:
        attack(one_slot, sentinel, plant)
        attack(one_slot, sentinel, read)
    finally:
        one_slot.close()


def test_import_paths_under_home_opt_symlinks_and_nesting(sentinel):
    """Exposed paths under /tmp, /home and /opt, behind a symlinked prefix, and nested."""
    if NAMESPACE_UNSUPPORTED is not None:
        pytest.skip(f"namespace isolation cannot run on this machine: {NAMESPACE_UNSUPPORTED}")
    from rltrain.rewards.sandbox import Sandbox

    made, paths, expect = [], [], []
    try:
        for i, base in enumerate(("/tmp", "/home", "/opt")):
            os.makedirs(base, exist_ok=True)
            root = tempfile.mkdtemp(prefix="rltrain-layout-", dir=base)
            made.append(root)
            real = os.path.join(root, "real", "lib", "site-packages")
            os.makedirs(os.path.join(real, "nested"))
            os.symlink(os.path.join(root, "real"), os.path.join(root, "prefix"))  # a symlinked prefix
            for path, name in ((real, f"mod{i}"), (os.path.join(real, "nested"), f"inner{i}")):
                with open(os.path.join(path, name + ".py"), "w") as fh:
                    fh.write(f"VALUE = {name!r}\n")
                expect.append(name)
            os.chmod(root, 0o755)
            paths += [os.path.join(root, "prefix", "lib", "site-packages"), os.path.join(real, "nested")]
        sandbox = Sandbox(isolation="auto", num_workers=1, use_cgroups=False, import_paths=paths)
        try:
            assert sandbox.isolation == "namespace"
            code = "import importlib\nprint(' '.join(importlib.import_module(m).VALUE for m in %r))" % expect
            run = sandbox.run(code, [""])
            assert run.tests[0].status == "ok", run
            assert run.tests[0].text.split() == expect
        finally:
            sandbox.close()
    finally:
        for root in made:
            shutil.rmtree(root, ignore_errors=True)


@pytest.mark.skipif(INNER, reason="this is the inner run")
def test_suite_from_an_interpreter_under_tmp():
    """The whole suite again (this file and round two's) from a venv under /tmp whose
    site-packages hold a copy of rltrain."""
    if NAMESPACE_UNSUPPORTED is not None:
        pytest.skip(f"namespace isolation cannot run on this machine: {NAMESPACE_UNSUPPORTED}")
    import site
    import sysconfig

    tmp = tempfile.mkdtemp(prefix="rltrain-tmp-layout-", dir="/tmp")
    try:
        venv = os.path.join(tmp, "venv")
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=120)
        python = os.path.join(venv, "bin", "python")
        target = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                check=True, capture_output=True, text=True).stdout.strip()
        shutil.copytree(os.path.dirname(rltrain.__file__), os.path.join(target, "rltrain"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        # pytest and the other test dependencies from this interpreter (plain path entries, so its
        # editable finder for the repository's rltrain is not installed).
        deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if os.path.isdir(p)]
        with open(os.path.join(target, "zz_test_deps.pth"), "w") as fh:
            fh.write("\n".join(dict.fromkeys(deps)) + "\n")
        tests = os.path.join(tmp, "tests")
        os.makedirs(tests)
        here = os.path.dirname(os.path.abspath(__file__))
        for name in ("test_sandbox_adversarial.py", "test_sandbox_round2.py", "sandbox_support.py"):
            shutil.copy(os.path.join(here, name), tests)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        env.update(RLTRAIN_ADVERSARIAL_INNER="1", RLTRAIN_PROJECT_ROOT=PROJECT)
        proc = subprocess.run(
            [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "--rootdir", tmp, "-c", os.devnull,
             "-k", "not test_suite_from_an_interpreter_under_tmp", tests],
            cwd=tmp, env=env, capture_output=True, text=True, timeout=300,
        )
        summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:]
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
        assert "passed" in summary and "skipped" not in summary and "failed" not in summary, summary
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
