"""`precise config validate|show`: check a YAML config, print the effective one with secrets redacted.

A separate module registered from precise.cli, so each group of verbs merges on its own.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from precise.config import ConfigError, load_config

REDACTED = "<redacted>"
# Keys whose values are credentials (kafka client_options such as sasl_plain_password, ssl_password,
# sasl_oauth_token; anything named *secret*). token_file / token_env / max_tokens name no secret.
_SECRET_KEY = re.compile(r"(password|passwd|secret|credential|api_key|(^|_)token$|^sasl_users$)", re.IGNORECASE)


def redact(value: Any) -> Any:
    """A copy of a config dump with every credential-bearing value replaced by REDACTED."""
    if isinstance(value, dict):
        return {k: (REDACTED if _SECRET_KEY.search(str(k)) and v is not None else redact(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _run(args: argparse.Namespace) -> int:
    if args.config is not None and not Path(args.config).is_file():
        print(f"error: config file {args.config} does not exist", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config)
    except ConfigError as exc:  # the file exists but is not a usable config: the check failed
        if args.json:
            print(json.dumps({"valid": False, "config": args.config, "error": str(exc)}))
        else:
            print(f"invalid: {exc}", file=sys.stderr)
        return 1
    if args.action == "validate":
        if args.json:
            print(json.dumps({"valid": True, "config": args.config, "name": config.name}))
        else:
            print(f"valid: {args.config or '(built-in defaults)'} (name {config.name!r})")
        return 0
    dump = redact(config.model_dump(mode="json"))
    print((json.dumps(dump, indent=2) if args.json else yaml.safe_dump(dump, sort_keys=False)).rstrip("\n"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `config` verbs to the top-level parser's subcommands."""
    parser = sub.add_parser(
        "config", help="check a config file, or print the effective config (secrets redacted)",
        description="validate: exit 0 if the file is a valid config, 1 if not (the reason on stderr), "
                    "2 if it does not exist. show: the effective config with defaults filled in and "
                    "credentials (passwords, tokens, secrets) redacted.")
    parser.add_argument("action", choices=["validate", "show"])
    parser.add_argument("--config", help="YAML config (default: built-in defaults)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=_run)
