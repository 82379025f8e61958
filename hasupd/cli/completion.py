"""bash and zsh completion for hasupctl, generated from its argument parser.

The commands, options and option values come from ``hasupd.cli.ctl.build_parser()``, so a new command
or option is completed once ``python3 -m hasupd.cli.gendocs`` has run (a test fails until it has).
Service and job names come from the running daemon (``hasupctl --json status`` and ``hasupctl --json
backup status``), with a two-second limit and no output when no daemon answers.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

# What a positional argument or option value is, by its metavar: names asked of the running daemon.
# (alert silence's TARGET is offered service names; the event names and group ids it also takes are
# typed.)
KINDS = {"NAME": "units", "JOB": "jobs", "TARGET": "units"}
# Values offered for an option that takes any of more than it is worth listing (kill -s also takes
# numbers and names without SIG).
SIGNALS = "choice:" + ",".join(
    f"SIG{name}" for name in ("HUP", "INT", "QUIT", "KILL", "USR1", "USR2", "TERM", "CONT", "STOP", "WINCH")
)
OFFERED = {"--signal": SIGNALS}
# Options whose metavar says NAME but whose value is no service: restore --database NAME names a dump
# of the job (hasupctl backup list), which the daemon's status does not list.
NOT_BY_METAVAR = {"--database"}
ANYTHING = "-"  # a positional argument completed to nothing (a word, so that positions stay counted)
# Prints the names in `hasupctl --json status` (units and their services) or `backup status` (jobs).
_NAMES_PY = (
    "import json,sys\n"
    "try: items=json.load(sys.stdin)\n"
    "except ValueError: sys.exit(0)\n"
    'keys=("job",) if sys.argv[1]=="jobs" else ("name","service")\n'
    'print("\\n".join(sorted({str(i[k]) for i in items if isinstance(i,dict) for k in keys if i.get(k)})))'
)


@dataclass
class Command:
    """One command path (``"hasupctl"``, ``"hasupctl backup run"``) as completion sees it."""

    path: str
    subcommands: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    # option -> what its value is: "units", "jobs", "choice:a,b,c" or "" (anything)
    valued: dict[str, str] = field(default_factory=dict)
    # what each positional argument is ("units", "jobs", "choice:a,b,c" or ANYTHING); ``repeat``: the
    # last one repeats
    positionals: list[str] = field(default_factory=list)
    repeat: bool = False


def _value_kind(action: argparse.Action) -> str:
    if action.choices is not None:
        return "choice:" + ",".join(str(choice) for choice in action.choices)
    for option in action.option_strings:
        if option in OFFERED:
            return OFFERED[option]
    if NOT_BY_METAVAR.intersection(action.option_strings):
        return ""
    return KINDS.get(str(action.metavar), "")


def commands(parser: argparse.ArgumentParser, path: str = "hasupctl") -> list[Command]:
    """Return ``parser``'s command and, depth first in parser order, its subcommands."""
    command = Command(path)
    found = [command]
    for action in parser._actions:  # argparse has no public walk of its actions
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                command.subcommands.append(name)
                found += commands(child, f"{path} {name}")
        elif action.option_strings:
            for option in action.option_strings:
                if option not in command.options:
                    command.options.append(option)
                if action.nargs != 0:
                    command.valued[option] = _value_kind(action)
        else:
            command.positionals.append(_value_kind(action) or ANYTHING)
            command.repeat = action.nargs in ("*", "+")
    return found


def _words(items: list[str] | dict[str, str]) -> str:
    return " ".join(items)


def bash_script(parser: argparse.ArgumentParser) -> str:
    """Return the bash completion script for ``parser`` (hasupctl's)."""
    data = []
    for c in commands(parser):
        key = f'"{c.path}"'
        data.append(f"_hasupctl_subs[{key}]='{_words(c.subcommands)}'")
        data.append(f"_hasupctl_opts[{key}]='{_words(c.options)}'")
        data.append(f"_hasupctl_args[{key}]='{_words(c.positionals)}'")
        data.append(f"_hasupctl_repeat[{key}]='{'1' if c.repeat else ''}'")
        for option, kind in c.valued.items():
            data.append(f"_hasupctl_values[\"{c.path}|{option}\"]='{kind}'")
    return BASH_TEMPLATE.replace("@DATA@", "\n".join(data)).replace("@NAMES_PY@", _NAMES_PY)


def zsh_script(parser: argparse.ArgumentParser) -> str:
    """Return the zsh completion function file (_hasupctl) for ``parser`` (hasupctl's)."""
    tables: dict[str, list[str]] = {name: [] for name in ("subs", "opts", "args", "repeat", "values")}
    for c in commands(parser):
        tables["subs"] += [c.path, _words(c.subcommands)]
        tables["opts"] += [c.path, _words(c.options)]
        tables["args"] += [c.path, _words(c.positionals)]
        tables["repeat"] += [c.path, "1" if c.repeat else ""]
        for option, kind in c.valued.items():
            tables["values"] += [f"{c.path}|{option}", kind]
    # zsh keeps quotes inside a subscript as part of the key: the tables are written as pair lists.
    data = [
        f"_hasupctl_{name}=(\n"
        + "".join(f"    '{k}' '{v}'\n" for k, v in zip(pairs[::2], pairs[1::2], strict=True))
        + ")"
        for name, pairs in tables.items()
    ]
    return ZSH_TEMPLATE.replace("@DATA@", "\n".join(data)).replace("@NAMES_PY@", _NAMES_PY)


_HEADER = (
    "# Generated from hasupctl's argument parser by python3 -m hasupd.cli.gendocs; do not edit.\n"
    "# Service and job names are asked of the running daemon (2 s at most, silent without one).\n"
)

BASH_TEMPLATE = (
    "# bash completion for hasupctl(8).\n"
    + _HEADER
    + r"""
declare -gA _hasupctl_subs _hasupctl_opts _hasupctl_args _hasupctl_repeat _hasupctl_values
@DATA@

# Print the names of kind $1 (units or jobs) that the daemon at socket $2 (or the default) knows.
_hasupctl_names() {
    local -a cmd=(hasupctl)
    [[ -n $2 ]] && cmd+=(--socket "$2")
    cmd+=(--json)
    if [[ $1 == jobs ]]; then cmd+=(backup status); else cmd+=(status); fi
    timeout 2 "${cmd[@]}" 2>/dev/null </dev/null | python3 -c '@NAMES_PY@' "$1" 2>/dev/null
}

# ("at", not "path": zsh ties $path to $PATH.)
_hasupctl() {
    local cur=${COMP_WORDS[COMP_CWORD]} at=hasupctl socket="" word kind i npos=0
    COMPREPLY=()
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${COMP_WORDS[i]}
        if [[ $word == -* ]]; then
            if [[ -n ${_hasupctl_values["$at|$word"]+set} ]]; then
                [[ $word == --socket ]] && socket=${COMP_WORDS[i + 1]}
                ((i++))
            fi
        elif ((npos == 0)) && [[ " ${_hasupctl_subs[$at]} " == *" $word "* ]]; then
            at="$at $word"
        else
            ((npos++))
        fi
    done
    local prev=${COMP_WORDS[COMP_CWORD - 1]}
    if ((COMP_CWORD > 1)) && [[ $prev == -* && -n ${_hasupctl_values["$at|$prev"]+set} ]]; then
        kind=${_hasupctl_values["$at|$prev"]}
    elif [[ $cur == -* ]]; then
        COMPREPLY=($(compgen -W "${_hasupctl_opts[$at]}" -- "$cur"))
        return 0
    elif [[ -n ${_hasupctl_subs[$at]} ]] && ((npos == 0)); then
        COMPREPLY=($(compgen -W "${_hasupctl_subs[$at]}" -- "$cur"))
        return 0
    else
        local -a kinds=(${_hasupctl_args[$at]})
        if ((npos < ${#kinds[@]})); then
            kind=${kinds[npos]}
        elif [[ -n ${_hasupctl_repeat[$at]} ]] && ((${#kinds[@]})); then
            kind=${kinds[-1]}
        fi
    fi
    case $kind in
        choice:*) kind=${kind#choice:} && COMPREPLY=($(compgen -W "${kind//,/ }" -- "$cur")) ;;
        units | jobs) COMPREPLY=($(compgen -W "$(_hasupctl_names "$kind" "$socket")" -- "$cur")) ;;
    esac
    return 0
}

complete -F _hasupctl hasupctl
"""
)

ZSH_TEMPLATE = (
    "#compdef hasupctl\n# zsh completion for hasupctl(8).\n"
    + _HEADER
    + r"""
typeset -gA _hasupctl_subs _hasupctl_opts _hasupctl_args _hasupctl_repeat _hasupctl_values
@DATA@

# Print the names of kind $1 (units or jobs) that the daemon at socket $2 (or the default) knows.
_hasupctl_names() {
    local -a cmd=(hasupctl)
    [[ -n $2 ]] && cmd+=(--socket "$2")
    cmd+=(--json)
    if [[ $1 == jobs ]]; then cmd+=(backup status); else cmd+=(status); fi
    timeout 2 "${cmd[@]}" 2>/dev/null </dev/null | python3 -c '@NAMES_PY@' "$1" 2>/dev/null
}

# ("at", not "path": zsh ties $path to $PATH.)
_hasupctl() {
    local cur=${words[CURRENT]} at=hasupctl socket="" word kind="" i npos=0
    for ((i = 2; i < CURRENT; i++)); do
        word=${words[i]}
        if [[ $word == -* ]]; then
            if (( ${+_hasupctl_values[$at|$word]} )); then
                [[ $word == --socket ]] && socket=${words[i + 1]}
                ((i++))
            fi
        elif ((npos == 0)) && [[ " ${_hasupctl_subs[$at]} " == *" $word "* ]]; then
            at="$at $word"
        else
            ((npos++))
        fi
    done
    local prev=${words[CURRENT - 1]}
    local -a candidates
    if ((CURRENT > 2)) && [[ $prev == -* ]] && (( ${+_hasupctl_values[$at|$prev]} )); then
        kind=${_hasupctl_values[$at|$prev]}
    elif [[ $cur == -* ]]; then
        candidates=(${=_hasupctl_opts[$at]})
        compadd -- $candidates
        return
    elif [[ -n ${_hasupctl_subs[$at]} ]] && ((npos == 0)); then
        candidates=(${=_hasupctl_subs[$at]})
        compadd -- $candidates
        return
    else
        local -a kinds=(${=_hasupctl_args[$at]})
        if ((npos < ${#kinds})); then
            kind=${kinds[npos + 1]}
        elif [[ -n ${_hasupctl_repeat[$at]} ]] && ((${#kinds})); then
            kind=${kinds[-1]}
        fi
    fi
    case $kind in
        choice:*) candidates=(${(s:,:)${kind#choice:}}) ;;
        units | jobs) candidates=(${(f)"$(_hasupctl_names $kind "$socket")"}) ;;
    esac
    (( ${#candidates} )) && compadd -- $candidates
}

_hasupctl "$@"
"""
)
