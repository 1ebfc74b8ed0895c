"""A storage password is never written or printed, whatever characters it holds: masking as a unit (no server),
and a real `-m` sweep whose storage is unreachable (Hydra's multirun.yaml, its job lines, the error line)."""

from urllib.parse import quote, quote_plus

import pytest
from helpers.env import bnexp, child_env
from sqlalchemy.engine import make_url

from bnexp import cli as bnexp_cli
from bnexp.cli import hide_storage_password, mask_url, redact, remember_secret, unmask_url

# every character the issue names, and the password as a URL must carry it (`@` and `%` percent-encoded)
PASSWORDS = ["Zq1/slash9", "at@sign7", "co:lon:3", "pct%41x", "hash#tag5", "spa ce 4", "all/@:%# of7them"]


@pytest.fixture(autouse=True)
def _no_secret_registered_yet(monkeypatch):
    """Each test starts from an empty process-wide secret list: a password one test registered must not mask
    it in another (which would pass whatever order the tests run in, for the wrong reason)."""
    monkeypatch.setattr(bnexp_cli, "_SECRETS", set())
    monkeypatch.setattr(bnexp_cli, "_HIDDEN", {})


def url_of(pw: str, host: str = "127.0.0.1:1") -> str:
    return f"postgresql://bnexp:{quote(pw, safe='/:# ')}@{host}/db"


def hydra_escaped(s: str) -> str:
    """As Hydra writes an override back (multirun.yaml's task, each job's report command)."""
    return "".join("\\" + c if c in "\\()[]{}:=, \t" else c for c in s)


@pytest.mark.parametrize("pw", PASSWORDS)
def test_every_password_sqlalchemy_accepts_is_masked_in_every_form(pw):
    url = url_of(pw)
    assert make_url(url).password == pw  # SQLAlchemy reads the password we mean
    masked = mask_url(url)
    assert masked == "postgresql://bnexp:***@127.0.0.1:1/db" and pw not in masked
    remember_secret(url)
    typed = url.split("bnexp:", 1)[1].rsplit("@", 1)[0]
    for text in (
        f"cannot open storage {url!r}: refused",
        f"python -m bnexp.sweep sweep.storage={url} model.depth=2",
        f"python -m bnexp.sweep sweep.storage={hydra_escaped(url)} model.depth=2",
        f"#0 : model.depth=2 sweep.storage={hydra_escaped(url)}",
        f"the password is {pw}",
    ):
        out = redact(text)
        assert pw not in out and typed not in out and hydra_escaped(typed) not in out, (text, out)
        assert "***" in out


@pytest.mark.parametrize("pw", PASSWORDS)
def test_a_registered_password_is_masked_in_its_percent_encoded_forms_too(pw):
    """A log or library may write the password percent-encoded (`%2F` for `/`, `+` for a space), outside any
    URL, where no shape gives it away: only the registered forms mask it."""
    remember_secret(url_of(pw))
    for form in {quote(pw, safe=""), quote_plus(pw), quote(pw)} - {pw}:
        out = redact(f"connecting with password={form} now")
        assert form not in out and "***" in out, (form, out)


@pytest.mark.parametrize("pw", [p for p in PASSWORDS if " " not in p])
def test_an_unregistered_password_is_masked_by_its_shape(pw):
    # a URL bnexp never opened (in a message of a library): the password runs to the first `@`, as SQLAlchemy reads
    pw = f"{pw}-unseen"  # nothing is registered (the fixture empties the process-wide list)
    assert not bnexp_cli._SECRETS
    url = url_of(pw, "db.example:5432")
    for text in (f"x {url} y", f"x {hydra_escaped(url)} y", f"'{url}'"):
        out = redact(text)
        assert "***@" in out and "db.example" in out and "unseen" not in out, out


def test_a_storage_password_on_the_command_line_is_masked_before_hydra_sees_it():
    url = url_of("all/@:%# of7them")
    argv = ["-m", "model.depth=2,3", f"sweep.storage={url}", "sweep.name=x"]
    out = hide_storage_password(argv)
    assert out == ["-m", "model.depth=2,3", "sweep.storage=postgresql://bnexp:***@127.0.0.1:1/db", "sweep.name=x"]
    assert unmask_url(out[2].split("=", 1)[1]) == url  # the storage opens with the real URL (bnexp.sweep.storage)
    assert hide_storage_password(["sweep.storage=sqlite:///a.db"]) == ["sweep.storage=sqlite:///a.db"]


@pytest.mark.parametrize("quoted", [False, True], ids=["percent-encoded", "quoted"])
def test_multirun_with_a_password_writes_and_prints_it_nowhere(tmp_path, quoted):
    """Real Hydra, real sweep command, `-m` over two jobs, a password with `/ @ : % #` and a space; the server is
    unreachable (port 1), so each job stops at the storage: exit 2, and no file or line holds the password.
    Hydra's grammar takes a raw `#` only inside quotes: `sweep.storage='...'`; else it is written `%23`."""
    pw = "Zq1/s@l:a%s#h p9"
    url = url_of(pw) if quoted else f"postgresql://bnexp:{quote(pw, safe='/: ')}@127.0.0.1:1/db"
    r = bnexp(
        "sweep",
        "-m",
        "model.depth=2,3",
        f"sweep.storage='{url}'" if quoted else f"sweep.storage={url}",
        f"sweep.out_dir={tmp_path}/sw",
        "sweep.lr.points=2",
        "sweep.grid.model.bn=[pre]",
        "sweep.seeds=[0]",
        "logger=none",
        cwd=tmp_path,
        env=child_env(BNEXP_LOG="INFO"),
        timeout=120,
    )
    said = r.stdout + r.stderr
    assert r.returncode == 2 and "cannot open storage 'postgresql://bnexp:***@127.0.0.1:1/db'" in said, said
    assert "#0 : " in said  # Hydra's job line was printed, and checked
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.name == "multirun.yaml" for p in files)  # Hydra's sweeper wrote it: checked too
    typed = url.split("bnexp:", 1)[1].rsplit("@", 1)[0]
    forms = {pw, quote(pw, safe=""), typed, hydra_escaped(typed)}
    leaks = [(str(p), f) for p in files for f in forms if f.encode() in p.read_bytes()]
    leaks += [("stdout/stderr", f) for f in forms if f in said]
    assert not leaks, leaks


def test_a_password_with_an_unencoded_at_is_refused_and_never_shown_in_part():
    """`u:Kq7é /:@?#%Zw@host`: SQLAlchemy reads the password up to the first `@` and the rest as the host; the
    command line is refused (one line, no part of the password), and any text holding it is masked whole."""
    from bnexp.cli import UsageError, unencoded_at

    url = "postgresql://u:Kq7é /:@?#%Zw@127.0.0.1:5432/db"
    assert unencoded_at(url) == "Kq7é /:@?#%Zw" and unencoded_at(url_of("at@sign7")) is None
    assert unencoded_at("postgresql://u:p@h/db?options=a@b") is None  # an @ in the query is not one
    with pytest.raises(UsageError) as e:
        hide_storage_password([f"sweep.storage={url}"])
    assert "%40" in str(e.value) and "Kq7" not in str(e.value) and "Zw" not in str(e.value)
    remember_secret(url)
    assert redact(f"storage {url} refused") == "storage postgresql://u:***@127.0.0.1:5432/db refused"
    assert redact("x postgresql://u:at@sign7@db.example:5432/db y") == "x postgresql://u:***@db.example:5432/db y"
