"""A real local WordPress for the tests, the demo and ``make run``: Debian's package, no Docker.

``python -m infra.wordpress up|down|purge|status [--root DIR] [--port N] [--db-port N] [--webhook-url URL]``

``up`` is idempotent and brings an instance to "running, installed, credentials fresh":

1. installs what is missing with ``apt-get`` (``wordpress``, its theme, ``php-cli``, ``php-mysql``,
   MariaDB);
2. a private MariaDB (``--no-defaults``: its own datadir, socket and port under the root dir; root
   only through the socket, WordPress as a password user over TCP);
3. the instance config (from ``infra/wordpress_site/config.php.in``), which Debian's ``wp-config.php``
   loads as ``/etc/wordpress/config-<instance>.php``: a symlink named after a hash of the root dir,
   so two instances never share one, and only our own symlink is ever replaced or removed;
4. installs WordPress from the PHP CLI (``infra/wordpress_site/install.php``): no HTTP self-requests,
   which a busy ``php -S`` could not answer;
5. ``php -S`` with ``PHP_CLI_SERVER_WORKERS`` (at least 2: a webhook or any call back into the site
   would deadlock a single worker), in its own session, so ``down`` stops its whole process group;
6. users ``admin``, ``author`` and ``contributor`` with an Application Password each, re-issued on
   every ``up`` (WordPress stores only their hashes), written to ``<root>/credentials.json`` (0600).

Pressline's mu-plugin (``infra/wordpress_site/pressline.php``) is installed into the instance; with a
webhook URL and secret it sends signed events to Pressline (see the plugin's header).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx

from shared.wordpress.credentials import SiteCredentials

__all__ = [
    "PACKAGES",
    "BootstrapError",
    "LocalWordPress",
    "WordPressConfig",
    "down",
    "ensure_packages",
    "purge",
    "register_site",
    "start_for_stack",
    "status",
    "up",
    "write_config",
]

ROOT = Path(__file__).resolve().parents[1]
ASSETS = Path(__file__).resolve().with_name("wordpress_site")  # the PHP side: mu-plugin, router, config
WP_DIR = Path("/usr/share/wordpress")
ETC_DIR = Path("/etc/wordpress")
THEME = "twentytwentythree"
#: Debian packages the local WordPress needs (wordpress pulls in php and the mysql client too).
PACKAGES: tuple[str, ...] = (
    "wordpress",
    "wordpress-theme-twentytwentythree",
    "php-cli",
    "php-mysql",
    "mariadb-server",
    "mariadb-client",
)
#: The users every instance has: login -> role. The first one is the administrator.
USERS: tuple[tuple[str, str], ...] = (
    ("admin", "administrator"),
    ("author", "author"),
    ("contributor", "contributor"),
)
DB_NAME = "wordpress"
DB_USER = "wp"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0

Say = Callable[[str], None]


class BootstrapError(RuntimeError):
    """The instance cannot be brought up; the message says why and what to do."""


@dataclass(frozen=True)
class WordPressConfig:
    """One local instance: where its files live and where it listens.

    Parameters:
      root(Path): Its directory (database, content, config, logs, credentials).
      port(int): ``php -S`` port.
      db_port(int): The private MariaDB's TCP port (127.0.0.1 only).
      workers(int): ``PHP_CLI_SERVER_WORKERS`` (at least 2).
      site(str): Pressline's name for the site (sent in webhooks' config, informative).
      webhook_url(str | None): Where the mu-plugin posts signed events; None: no webhooks.
      webhook_secret(str | None): The ``whsec_`` signing secret (Pressline's per-site secret).
      app_name(str): Name of the Application Passwords this ``up`` re-issues; others stay valid.
    """

    root: Path = ROOT / ".data" / "wordpress"
    port: int = 8088
    db_port: int = 3317
    workers: int = 4
    site: str = "local"
    webhook_url: str | None = None
    webhook_secret: str | None = field(default=None, repr=False)
    app_name: str = "pressline"

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).resolve())
        if self.workers < 2:
            raise ValueError("workers must be at least 2 (a call back into the site needs a second one)")
        if bool(self.webhook_url) != bool(self.webhook_secret):
            raise ValueError("webhook_url and webhook_secret go together")

    @property
    def instance(self) -> str:
        """Debian's config name for this root dir: ``/etc/wordpress/config-<instance>.php``."""
        return "pressline-" + hashlib.sha256(str(self.root).encode()).hexdigest()[:12]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def config_link(self) -> Path:
        return ETC_DIR / f"config-{self.instance}.php"

    def path(self, name: str) -> Path:
        return self.root / name


@dataclass(frozen=True)
class LocalWordPress:
    """A running instance and its users' credentials.

    Parameters:
      base_url(str)
      admin(SiteCredentials): Administrator (may do anything).
      author(SiteCredentials): Author (may publish own posts).
      contributor(SiteCredentials): Contributor (drafts and pending only).
      admin_password(str): The administrator's login password, for wp-admin in a browser.
      config(WordPressConfig)
      processes: The processes this call started (empty when they were already running).
    """

    base_url: str
    admin: SiteCredentials
    author: SiteCredentials
    contributor: SiteCredentials
    admin_password: str = field(repr=False)
    config: WordPressConfig
    processes: tuple[subprocess.Popen[bytes], ...] = field(default=(), repr=False, compare=False)

    def user(self, role: str) -> SiteCredentials:
        return {"administrator": self.admin, "author": self.author, "contributor": self.contributor}[role]


# --- packages -------------------------------------------------------------------------------------


def _missing_tools() -> list[str]:
    missing = [tool for tool in ("php", "mariadbd", "mariadb-install-db", "mariadb") if not _which(tool)]
    if not (WP_DIR / "wp-load.php").is_file():
        missing.append("wordpress")
    if not (WP_DIR / "wp-content" / "themes" / THEME).is_dir():
        missing.append(THEME)
    if not missing and "mysqli" not in _run(["php", "-m"]).stdout:
        missing.append("php-mysql")
    return missing


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")


def ensure_packages(say: Say = print) -> None:
    """Install the Debian packages when anything is missing (needs root, like ``make system-deps``)."""
    missing = _missing_tools()
    if not missing:
        return
    if os.geteuid() != 0:
        raise BootstrapError(
            f"missing {', '.join(missing)}; run as root or: apt-get install {' '.join(PACKAGES)}"
        )
    say(f"installing {' '.join(PACKAGES)} with apt-get (missing: {', '.join(missing)})")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        _run(["apt-get", "update", "-qq"], env=env)
        _run(install, env=env)
    still = _missing_tools()
    if still:
        raise BootstrapError(f"apt-get ran, but still missing: {', '.join(still)}")


# --- processes ------------------------------------------------------------------------------------


def _run(args: Sequence[str], *, env: dict[str, str] | None = None, input: str | None = None) -> Any:
    result = subprocess.run(list(args), env=env, input=input, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise BootstrapError(
            f"{Path(args[0]).name} {args[1] if len(args) > 1 else ''} failed: {' | '.join(tail)}"
        )
    return result


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int | None, marker: str) -> bool:
    """``pid`` runs (not a zombie) and its command line contains ``marker`` (so it is ours)."""
    if pid is None:
        return False
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our exited child
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X") and marker in cmdline


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise BootstrapError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.05)


def _stop(pid: int | None, marker: str, *, group: bool, timeout_s: float) -> bool:
    """SIGTERM (the group, when it leads one), wait, then SIGKILL. True if something was stopped."""
    if pid is None or not _alive(pid, marker):
        return False
    kill: Callable[[int, int], None] = os.killpg if group else os.kill
    with contextlib.suppress(ProcessLookupError):
        kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid, marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _alive(pid, marker):
        with contextlib.suppress(ProcessLookupError):
            kill(pid, signal.SIGKILL)
        _wait(lambda: not _alive(pid, marker), 5.0, f"pid {pid} to exit")
    return True


# --- state ----------------------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 0600, never wider)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


_SALTS = (
    "AUTH_KEY", "SECURE_AUTH_KEY", "LOGGED_IN_KEY", "NONCE_KEY",
    "AUTH_SALT", "SECURE_AUTH_SALT", "LOGGED_IN_SALT", "NONCE_SALT",
)  # fmt: skip


def _state(cfg: WordPressConfig) -> dict[str, Any]:
    """The instance's generated secrets (DB and login passwords, salts), made once and kept."""
    path = cfg.path("state.json")
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    data = {
        "db_password": secrets.token_hex(16),
        "passwords": {login: secrets.token_urlsafe(18) for login, _ in USERS},
        "salts": {name: secrets.token_urlsafe(48) for name in _SALTS},
    }
    _write_private(path, json.dumps(data, indent=2))
    return data


# --- MariaDB --------------------------------------------------------------------------------------


def _mysql_marker(cfg: WordPressConfig) -> str:
    return f"--datadir={cfg.path('mysql')}"


def _db_ping(cfg: WordPressConfig) -> bool:
    result = subprocess.run(
        ["mariadb-admin", "--no-defaults", f"--socket={cfg.path('mysql.sock')}", "-uroot",
         "--connect-timeout=1", "ping"],
        capture_output=True,
    )  # fmt: skip
    return result.returncode == 0


def _start_db(cfg: WordPressConfig, say: Say) -> subprocess.Popen[bytes] | None:
    datadir = cfg.path("mysql")
    if not (datadir / "mysql").is_dir():
        say(f"initialising MariaDB in {datadir}")
        shutil.rmtree(datadir, ignore_errors=True)
        _run(
            ["mariadb-install-db", "--no-defaults", "--user=root", f"--datadir={datadir}",
             "--auth-root-authentication-method=socket", "--skip-test-db", "--innodb-log-file-size=16M"]
        )  # fmt: skip
    process = None
    if not _alive(_read_pid(cfg.path("mysql.pid")), _mysql_marker(cfg)):
        if _listening(cfg.db_port):
            raise BootstrapError(f"port {cfg.db_port} is in use by something else; choose another --db-port")
        log = open(cfg.path("mysql.out"), "ab")  # noqa: SIM115 - handed to the child
        process = subprocess.Popen(
            [_which("mariadbd") or "mariadbd", "--no-defaults", "--user=root", f"--datadir={datadir}",
             f"--socket={cfg.path('mysql.sock')}", f"--port={cfg.db_port}", "--bind-address=127.0.0.1",
             "--skip-name-resolve", f"--pid-file={cfg.path('mysql.pid')}",
             f"--log-error={cfg.path('mysql.err')}", "--innodb-buffer-pool-size=128M",
             "--innodb-log-file-size=16M", "--innodb-flush-log-at-trx-commit=2",
             "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        say(f"started MariaDB (pid {process.pid}) on 127.0.0.1:{cfg.db_port}")
    _wait(lambda: _db_ping(cfg), START_TIMEOUT_S, f"MariaDB (see {cfg.path('mysql.err')})")
    return process


def _ensure_database(cfg: WordPressConfig, password: str) -> None:
    statements = [
        f"CREATE DATABASE IF NOT EXISTS {DB_NAME} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;"
    ]
    for host in ("127.0.0.1", "localhost"):
        user = f"'{DB_USER}'@'{host}'"
        statements += [
            f"CREATE USER IF NOT EXISTS {user} IDENTIFIED BY '{password}';",
            f"ALTER USER {user} IDENTIFIED BY '{password}';",
            f"GRANT ALL PRIVILEGES ON {DB_NAME}.* TO {user};",
        ]
    _run(
        ["mariadb", "--no-defaults", f"--socket={cfg.path('mysql.sock')}", "-uroot"],
        input="\n".join(statements) + "\nFLUSH PRIVILEGES;\n",
    )


# --- WordPress files ------------------------------------------------------------------------------


def _php(value: str | None) -> str:
    """A PHP single-quoted literal."""
    text = value or ""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def write_config(cfg: WordPressConfig) -> None:
    """(Re)write the instance's config, router and mu-plugin, and link the config into /etc/wordpress.

    PHP reads the config on every request (php -S keeps it out of opcache, whose timestamp check
    runs only every 2 s), so a new webhook URL or secret takes effect at once.
    """
    state = _state(cfg)
    values = {
        "INSTANCE": cfg.instance,
        "DB_NAME": _php(DB_NAME),
        "DB_USER": _php(DB_USER),
        "DB_PASSWORD": _php(state["db_password"]),
        "DB_HOST": _php(f"127.0.0.1:{cfg.db_port}"),
        "BASE_URL": _php(cfg.base_url),
        "CONTENT_DIR": _php(str(cfg.path("wp-content"))),
        "SITE": _php(cfg.site),
        "WEBHOOK_URL": _php(cfg.webhook_url),
        "WEBHOOK_SECRET": _php(cfg.webhook_secret),
        **{name: _php(value) for name, value in state["salts"].items()},
    }
    text = (ASSETS / "config.php.in").read_text()
    for name, value in values.items():
        text = text.replace(f"@@{name}@@", value)
    if "@@" in text:
        raise BootstrapError("config.php.in has a placeholder the bootstrap does not fill")
    _write_private(cfg.path("config.php"), text)
    cfg.path("opcache-blacklist.txt").write_text(f"{cfg.path('config.php')}\n{cfg.config_link}\n")
    content = cfg.path("wp-content")
    for sub in ("mu-plugins", "plugins", "themes", "uploads"):
        (content / sub).mkdir(parents=True, exist_ok=True)
    theme = content / "themes" / THEME
    if not theme.exists():
        theme.symlink_to(WP_DIR / "wp-content" / "themes" / THEME)
    shutil.copyfile(ASSETS / "pressline.php", content / "mu-plugins" / "pressline.php")
    shutil.copyfile(ASSETS / "router.php", cfg.path("router.php"))
    _link_config(cfg)


def _link_config(cfg: WordPressConfig) -> None:
    """``/etc/wordpress/config-<instance>.php`` -> our config; refuse to replace anyone else's."""
    link, target = cfg.config_link, cfg.path("config.php")
    ETC_DIR.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.is_symlink() and Path(os.readlink(link)) == target:
            return
        raise BootstrapError(f"{link} exists and is not ours (it should link to {target}); remove it by hand")
    link.symlink_to(target)


def _unlink_config(cfg: WordPressConfig) -> bool:
    link = cfg.config_link
    if link.is_symlink() and Path(os.readlink(link)) == cfg.path("config.php"):
        link.unlink()
        return True
    return False


def _installer(cfg: WordPressConfig, mode: str, state: dict[str, Any]) -> dict[str, Any]:
    spec = {
        "title": "Pressline local",
        "app_name": cfg.app_name,
        "users": [
            {
                "login": login,
                "role": role,
                "email": f"{login}@example.test",
                "password": state["passwords"][login],
            }
            for login, role in USERS
        ],
    }
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PRESSLINE_WP_INSTANCE": cfg.instance,
        "PRESSLINE_WP_HOST": f"127.0.0.1:{cfg.port}",
        "PRESSLINE_WP_SPEC": json.dumps(spec),
    }
    result = _run(["php", str(ASSETS / "install.php"), mode], env=env)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise BootstrapError(f"install.php {mode} printed no result")
    data: dict[str, Any] = json.loads(lines[-1])
    return data


# --- php -S ---------------------------------------------------------------------------------------


def _php_marker(cfg: WordPressConfig) -> str:
    return str(cfg.path("router.php"))


def _start_php(cfg: WordPressConfig, say: Say) -> subprocess.Popen[bytes] | None:
    if _alive(_read_pid(cfg.path("php.pid")), _php_marker(cfg)):
        return None
    if _listening(cfg.port):
        raise BootstrapError(f"port {cfg.port} is in use by something else; choose another --port")
    env = {
        **os.environ,
        "PHP_CLI_SERVER_WORKERS": str(cfg.workers),
        "PRESSLINE_WP_INSTANCE": cfg.instance,
        "PRESSLINE_WP_CONTENT_DIR": str(cfg.path("wp-content")),
    }
    log = open(cfg.path("php.log"), "ab")  # noqa: SIM115 - handed to the child
    process = subprocess.Popen(
        [
            "php", "-d", f"opcache.blacklist_filename={cfg.path('opcache-blacklist.txt')}",
            "-S", f"127.0.0.1:{cfg.port}", "-t", str(WP_DIR), str(cfg.path("router.php")),
        ],
        cwd=cfg.root, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # setsid: its own process group, which `down` stops as a whole
    )  # fmt: skip
    log.close()
    cfg.path("php.pid").write_text(f"{process.pid}\n")
    say(f"started php -S (pid {process.pid}, {cfg.workers} workers) on {cfg.base_url}")
    _wait(lambda: _listening(cfg.port) or process.poll() is not None, START_TIMEOUT_S, "php -S")
    if process.poll() is not None:
        raise BootstrapError(f"php -S exited with {process.returncode}; see {cfg.path('php.log')}")
    return process


# --- commands -------------------------------------------------------------------------------------


def up(cfg: WordPressConfig, say: Say = print) -> LocalWordPress:
    """Bring the instance up (idempotent) and re-issue its Application Passwords."""
    ensure_packages(say)
    cfg.root.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.root, 0o700)
    state = _state(cfg)
    started: list[subprocess.Popen[bytes]] = []
    db = _start_db(cfg, say)
    if db is not None:
        started.append(db)
    _ensure_database(cfg, state["db_password"])
    write_config(cfg)
    installed = _installer(cfg, "install", state)
    if not installed.get("was_installed"):
        say(f"installed WordPress for {cfg.base_url}")
    passwords = _installer(cfg, "users", state)["app_passwords"]
    php = _start_php(cfg, say)
    if php is not None:
        started.append(php)
    creds = {login: SiteCredentials(cfg.base_url, login, passwords[login]) for login, _ in USERS}
    site = LocalWordPress(
        base_url=cfg.base_url,
        admin=creds["admin"],
        author=creds["author"],
        contributor=creds["contributor"],
        admin_password=state["passwords"]["admin"],
        config=cfg,
        processes=tuple(started),
    )
    _write_credentials(cfg, site)
    _smoke(site)
    return site


def _write_credentials(cfg: WordPressConfig, site: LocalWordPress) -> None:
    data = {
        "base_url": site.base_url,
        "rest_root": site.base_url + "/wp-json",
        "admin_login_password": site.admin_password,
        "users": {
            c.username: {"username": c.username, "app_password": c.app_password}
            for c in (site.admin, site.author, site.contributor)
        },
        "app_password_name": cfg.app_name,
    }
    _write_private(cfg.path("credentials.json"), json.dumps(data, indent=2) + "\n")


def _smoke(site: LocalWordPress) -> None:
    """The admin's new Application Password works over REST (the whole chain is up)."""
    auth = (site.admin.username, site.admin.app_password)
    url = site.base_url + "/wp-json/wp/v2/users/me?context=edit"
    last = ""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, auth=auth, timeout=10.0)
            if response.status_code == 200 and "administrator" in response.json().get("roles", []):
                return
            last = f"HTTP {response.status_code}"
        except (httpx.HTTPError, ValueError) as error:
            last = type(error).__name__
        time.sleep(0.2)
    raise BootstrapError(f"WordPress at {site.base_url} does not answer REST as expected ({last})")


def down(cfg: WordPressConfig, say: Say = print) -> None:
    """Stop php -S (its process group) and MariaDB; keep the data."""
    if _stop(_read_pid(cfg.path("php.pid")), _php_marker(cfg), group=True, timeout_s=5.0):
        say("stopped php -S")
    cfg.path("php.pid").unlink(missing_ok=True)
    if _stop(_read_pid(cfg.path("mysql.pid")), _mysql_marker(cfg), group=False, timeout_s=STOP_TIMEOUT_S):
        say("stopped MariaDB")


def purge(cfg: WordPressConfig, say: Say = print) -> None:
    """``down``, then remove the root dir and our /etc/wordpress symlink (never anyone else's)."""
    down(cfg, say)
    if _unlink_config(cfg):
        say(f"removed {cfg.config_link}")
    if cfg.root.exists():
        shutil.rmtree(cfg.root)
        say(f"removed {cfg.root}")


def status(cfg: WordPressConfig) -> dict[str, Any]:
    """What runs and where (no secrets)."""
    return {
        "base_url": cfg.base_url,
        "root": str(cfg.root),
        "instance": cfg.instance,
        "php": _alive(_read_pid(cfg.path("php.pid")), _php_marker(cfg)),
        "mariadb": _alive(_read_pid(cfg.path("mysql.pid")), _mysql_marker(cfg)),
        "db_port": cfg.db_port,
        "config_linked": cfg.config_link.is_symlink()
        and Path(os.readlink(cfg.config_link)) == cfg.path("config.php"),
        "credentials_file": str(cfg.path("credentials.json"))
        if cfg.path("credentials.json").exists()
        else None,
    }


# --- Pressline sites ------------------------------------------------------------------------------


def config_from_settings(settings: Any, **overrides: Any) -> WordPressConfig:
    """The ``make run`` instance: ``<data dir>/wordpress`` on ``PRESSLINE_WORDPRESS_PORT``/``_DB_PORT``."""
    base = WordPressConfig(
        root=ROOT / settings.data_dir / "wordpress",
        port=settings.wordpress_port,
        db_port=settings.wordpress_db_port,
    )
    return replace(base, **overrides)


def site_webhook_secret(settings: Any, sm: Any, site: str) -> str:
    """The site's own webhook secret in Secrets Manager (what Pressline verifies), created if absent."""
    from localstack.bootstrap import ensure_secret, new_webhook_secret

    name = settings.webhook_site_secret_pattern.replace("{site}", site)
    ensure_secret(sm, name, new_webhook_secret(), origin="generated")
    return str(sm.get_secret_value(SecretId=name)["SecretString"]).strip()


def register_site(
    settings: Any,
    client: Any,
    *,
    site: str,
    tenant: str,
    publish: bool,
    webhook_url: str | None = None,
    config: WordPressConfig | None = None,
    role: str = "author",
    say: Say = print,
) -> LocalWordPress:
    """Bring the local WordPress up and make it Pressline site ``site`` of ``tenant``.

    Its webhooks are signed with the site's secret and sent to ``webhook_url`` (default: the API's
    route on ``PRESSLINE_API_PORT``); the ``role`` user's Application Password (its own name, so
    other sites' passwords on the same instance stay valid) goes to Secrets Manager, and the site is
    registered with its base URL and that secret's name.
    """
    from shared.aws import aws_client
    from shared.egress import EgressPolicy
    from shared.sites import Site, SiteRegistry
    from shared.wordpress.credentials import store_credentials

    sm = aws_client("secretsmanager", settings)
    url = webhook_url or f"http://127.0.0.1:{settings.api_port}/v1/webhooks/wordpress/{site}"
    base = config or config_from_settings(settings)
    cfg = replace(
        base, site=site, webhook_url=url, webhook_secret=site_webhook_secret(settings, sm, site),
        app_name=f"pressline-{site}",
    )  # fmt: skip
    wp = up(cfg, say)
    secret_id = settings.wordpress_credentials_pattern.replace("{site}", site)
    store_credentials(sm, secret_id, wp.user(role))
    # Its base URL is loopback: ``settings.egress_allow`` must name it (make run and the tests do).
    SiteRegistry(client, settings.namespace, EgressPolicy.from_settings(settings)).register(
        Site(
            site=site,
            tenant=tenant,
            publish_allowed=publish,
            base_url=wp.base_url,
            credentials_secret=secret_id,
        )
    )
    return wp


#: The name the demo and the benchmark use.


#: What ``make run`` registers when ``PRESSLINE_WORDPRESS=1``.
STACK_SITE = "local-wp"
STACK_TENANT = "demo"


def start_for_stack(
    settings: Any, say: Say
) -> list[tuple[str, subprocess.Popen[bytes], Callable[[], subprocess.Popen[bytes]]]]:
    """``make run``'s WordPress: restarted so the supervisor owns (and stops) its processes, then
    registered as site ``local-wp`` of tenant ``demo``, webhooks to the stack's API.

    Each process comes with its name and what starts it again should it die.
    """
    from shared.redis_client import redis_client

    cfg = config_from_settings(settings)
    down(cfg, say)
    site = register_site(
        settings, redis_client(settings), site=STACK_SITE, tenant=STACK_TENANT, publish=False, say=say
    )
    say(
        f"wordpress      {site.base_url} (site {STACK_SITE} of tenant {STACK_TENANT}; "
        f"logins in {cfg.path('credentials.json')})"
    )
    started: list[tuple[str, subprocess.Popen[bytes], Callable[[], subprocess.Popen[bytes]]]] = []
    for process in site.processes:
        name = "mariadb" if "mariadbd" in str(process.args) else "wordpress"
        start = _start_db if name == "mariadb" else _start_php
        started.append((name, process, functools.partial(_start_again, start, cfg, say, name)))
    return started


def _start_again(
    start: Callable[[WordPressConfig, Say], subprocess.Popen[bytes] | None],
    cfg: WordPressConfig,
    say: Say,
    name: str,
) -> subprocess.Popen[bytes]:
    """Start one of the instance's processes again after it died (``make run``'s supervisor)."""
    process = start(cfg, say)
    if process is None:
        raise BootstrapError(f"{name} already runs outside the stack")
    return process


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.wordpress", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("up", "down", "purge", "status"))
    parser.add_argument("--root", type=Path, default=WordPressConfig.root, help="instance directory")
    parser.add_argument("--port", type=int, default=WordPressConfig.port)
    parser.add_argument("--db-port", type=int, default=WordPressConfig.db_port)
    parser.add_argument(
        "--webhook-url",
        help="send signed events here (the site's secret is read from, or created in, Secrets Manager)",
    )
    parser.add_argument("--site", default="local-wp", help="the Pressline site whose webhook secret signs")
    args = parser.parse_args(argv)
    cfg = WordPressConfig(root=args.root, port=args.port, db_port=args.db_port, site=args.site)
    try:
        if args.command == "up":
            if args.webhook_url:
                from shared.aws import aws_client
                from shared.config import Settings

                settings = Settings.from_env()
                secret = site_webhook_secret(settings, aws_client("secretsmanager", settings), args.site)
                cfg = replace(cfg, webhook_url=args.webhook_url, webhook_secret=secret)
            wp = up(cfg)
            print(f"WordPress {wp.base_url} (REST {wp.base_url}/wp-json), instance {cfg.instance}")
            print(f"users admin, author, contributor; credentials in {cfg.path('credentials.json')} (0600)")
        elif args.command == "down":
            down(cfg)
        elif args.command == "purge":
            purge(cfg)
        else:
            print(json.dumps(status(cfg), indent=2))
    except BootstrapError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
