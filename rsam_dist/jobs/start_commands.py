"""What a cluster file's shell command really runs: each `ray start` and the RAY_AUTH_MODE it gets.

    from rsam_dist.jobs.start_commands import ray_starts
    [start.auth_mode for start in ray_starts("ulimit -n 65536; RAY_AUTH_MODE=token ray start --head")]  # ['token']
    ray_starts("RAY_AUTH_MODE=disabled ray start --head; echo RAY_AUTH_MODE=token")[0].auth_mode         # 'disabled'

The cluster launcher runs each entry of a command list in its own `bash --login -c` (Ray's
command_runner), so an `export` in one entry never reaches the next, and the check reads one
entry at a time. A string search for "RAY_AUTH_MODE=token" passes commands whose `ray start`
runs without it (`...; echo RAY_AUTH_MODE=token`), so the command is split into words and
operators (shlex) and the variable is followed through the shell's rules: a prefix assignment
(`RAY_AUTH_MODE=token ray start`) wins; otherwise the exported value is in force, which
`export`, `unset` and plain assignments to an exported name change, a subshell, a pipeline
stage or a background job does not pass on, and a command that may be skipped (`a && export X`)
leaves unknown. Whatever the shell could do that this does not follow (`source`, `eval`,
`if`/`while`, `ray start` inside `bash -c "..."` or behind a variable) makes the value unknown
or the command unclear: the check then asks for the one form it can always read, a prefix
assignment directly before `ray start`.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

AUTH_VARIABLE = "RAY_AUTH_MODE"


class _Unknown:
    def __repr__(self) -> str:
        return "UNKNOWN"


UNKNOWN = _Unknown()
"""A value the shell may or may not have (a skipped export, `source`, a branch)."""
Value = str | None | _Unknown
"""A variable's value: a string, None (unset), or UNKNOWN."""


class UnclearCommand(ValueError):
    """The command runs (or may run) `ray start` in a way this module cannot follow."""


@dataclass(frozen=True)
class RayStart:
    """One `ray start` the command runs: its arguments and the RAY_AUTH_MODE in its environment."""

    args: tuple[str, ...]
    """The words after `ray start`."""
    auth_mode: Value

    def option(self, name: str) -> str | None:
        """The value of `--name=V` or `--name V` (the last one given), else None."""
        value = None
        for index, word in enumerate(self.args):
            if word.startswith(f"{name}="):
                value = word.partition("=")[2]
            elif word == name and index + 1 < len(self.args):
                value = self.args[index + 1]
        return value


def ray_starts(command: str) -> list[RayStart]:
    """Every `ray start` in one shell command, with the RAY_AUTH_MODE in force for it."""
    parser = _Parser(_tokens(command))
    parser.run_list(_State(None, False), closing=None)
    return parser.starts


# --- words and operators -------------------------------------------------------------------------

_OPERATORS = ("&&", "||", ";;", "|&", ">>", "<<", ">&", "<&", "&>", "(", ")", ";", "&", "|", "<", ">", "\n")
_LIST_SEPARATORS = {";", "&", "\n", ";;"}
_REDIRECTIONS = {">>", "<<", ">&", "<&", "&>", "<", ">"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_COMPOUND = {"if", "then", "else", "elif", "fi", "while", "until", "do", "done", "for", "case", "esac",
             "select", "function", "in"}
"""Reserved words of compound commands: what follows may or may not run."""
_STATE_CHANGERS = {"source", ".", "eval", "declare", "typeset", "readonly", "local", "set", "read", "mapfile"}
"""Builtins that can set or export a variable in ways not followed here."""


@dataclass(frozen=True)
class _Op:
    text: str


def _tokens(command: str) -> list[str | _Op]:
    """Words (quotes removed) and operators; newlines separate commands as `;` does."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars="();<>|&\n")
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    lexer.commenters = ""  # `#` starts a comment only at a word's start: keep it as a word (stricter)
    try:
        raw = list(lexer)
    except ValueError as err:  # no closing quotation
        raise UnclearCommand(f"cannot split it into words ({err})") from None
    tokens: list[str | _Op] = []
    for token in raw:
        if token and all(c in "();<>|&\n" for c in token):
            tokens.extend(_split_operators(token))
        else:
            tokens.append(token)
    return tokens


def _split_operators(run: str) -> list[_Op]:
    """shlex returns a run of operator characters as one token (`;(`, `)&&`): split it."""
    operators, index = [], 0
    while index < len(run):
        match = next(op for op in _OPERATORS if run.startswith(op, index))
        operators.append(_Op(match))
        index += len(match)
    return operators


# --- the shell's state for RAY_AUTH_MODE -------------------------------------------------------


@dataclass(frozen=True)
class _State:
    value: Value
    """The shell variable's value."""
    exported: bool | _Unknown
    """Whether it is in the environment of the commands the shell starts."""

    def in_environment(self) -> Value:
        if self.value is None or self.exported is False:
            return None
        return UNKNOWN if self.exported is UNKNOWN else self.value

    def join(self, other: _State) -> _State:
        """The state when either may hold: what they disagree on is unknown."""
        return _State(self.value if self.value == other.value else UNKNOWN,
                      self.exported if self.exported == other.exported else UNKNOWN)


_UNKNOWN_STATE = _State(UNKNOWN, UNKNOWN)


def _join_all(states: list[_State]) -> _State:
    joined = states[0]
    for state in states[1:]:
        joined = joined.join(state)
    return joined


# --- the parser: list, and-or list, pipeline, command -----------------------------------------


class _Parser:
    def __init__(self, tokens: list[str | _Op]):
        self.tokens = tokens
        self.position = 0
        self.starts: list[RayStart] = []
        self.conditional = False
        """Set once a compound command (if, while, ...) is seen: every later change is unknown."""

    def peek(self) -> str | _Op | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def run_list(self, state: _State, closing: str | None) -> _State:
        """Commands separated by ; & or newlines, up to `closing` (")" in a subshell) or the end."""
        while True:
            token = self.peek()
            if token is None:
                if closing is not None:
                    raise UnclearCommand("a `(` is never closed")
                return state
            if isinstance(token, _Op) and token.text == closing:
                self.position += 1
                return state
            if isinstance(token, _Op) and token.text in _LIST_SEPARATORS:
                self.position += 1
                continue
            if isinstance(token, _Op) and token.text not in _REDIRECTIONS and token.text != "(":
                raise UnclearCommand(f"an unexpected `{token.text.strip() or 'newline'}`")
            after = self.run_and_or(state)
            following = self.peek()
            if isinstance(following, _Op) and following.text == "&":
                after = state  # a background job runs in a subshell: nothing comes back
            state = after

    def run_and_or(self, state: _State) -> _State:
        """`a && b || c`: a runs for sure; each later one may be skipped, so its effects are unsure."""
        ends = [self.run_pipeline(state)]
        only_and = True
        while isinstance(self.peek(), _Op) and self.peek().text in ("&&", "||"):
            only_and = only_and and self.peek().text == "&&"
            self.position += 1
            # After a chain of && the previous command has run; after any || it may be any of them.
            ends.append(self.run_pipeline(ends[-1] if only_and else _join_all(ends)))
        return _join_all(ends)

    def run_pipeline(self, state: _State) -> _State:
        """`a | b`: with more than one stage, each runs in a subshell and passes nothing on."""
        after = self.run_command(state)
        stages = 1
        while isinstance(self.peek(), _Op) and self.peek().text in ("|", "|&"):
            self.position += 1
            self.run_command(state)
            stages += 1
        return after if stages == 1 else state

    def run_command(self, state: _State) -> _State:
        token = self.peek()
        if isinstance(token, _Op) and token.text == "(":
            self.position += 1
            self.run_list(state, closing=")")  # a subshell: its changes stay in it
            return state
        words: list[str] = []
        while (token := self.peek()) is not None:
            if isinstance(token, _Op):
                if token.text in _REDIRECTIONS:
                    self.position += 2  # the operator and its target
                    continue
                if token.text == "(":  # `$(...)`: runs with this state, changes nothing here
                    self.position += 1
                    self.run_list(state, closing=")")
                    words.append("$(...)")
                    continue
                break
            words.append(token)
            self.position += 1
        return self.simple_command(words, state)

    # --- one simple command ----------------------------------------------------------------

    def simple_command(self, words: list[str], state: _State) -> _State:
        prefix, index = {}, 0
        while index < len(words) and _is_assignment(words[index]):
            name, _, value = words[index].partition("=")
            prefix[name] = value
            index += 1
        rest = words[index:]
        while rest and rest[0] in _COMPOUND | {"!", "{", "}"}:
            self.conditional = self.conditional or rest[0] in _COMPOUND
            rest = rest[1:]
        if not rest:  # assignments only: they set shell variables (exported stay exported)
            if AUTH_VARIABLE in prefix:
                state = self.changed(state, _State(prefix[AUTH_VARIABLE], state.exported))
            return state
        environment = prefix.get(AUTH_VARIABLE, state.in_environment())
        return self.run_words(rest, environment, state)

    def run_words(self, words: list[str], environment: Value, state: _State) -> _State:
        command = words[0]
        if command == "export":
            return self.export(words[1:], state)
        if command == "unset":
            if AUTH_VARIABLE in words[1:]:
                return self.changed(state, _State(None, False))
            return state
        if command in _STATE_CHANGERS:
            if _mentions_ray_start(words):  # eval 'ray start', source a script that says it
                raise _hidden_in(command)
            if command in {"source", ".", "eval"} or any(AUTH_VARIABLE in word for word in words[1:]) or (
                    command == "set" and any(_sets_allexport(word) for word in words[1:])):
                return self.changed(state, _UNKNOWN_STATE)
            return state
        if command in {"env", "exec", "nohup", "command", "time"}:
            environment, remainder = _unwrap(command, words[1:], environment)
            if remainder:
                self.run_words(remainder, environment, state)
            return state  # these run another program: nothing changes in this shell
        if _basename(command) == "ray" and len(words) > 1 and words[1] == "start":
            self.starts.append(RayStart(tuple(words[2:]), environment))
            return state
        if _mentions_ray_start(words):
            raise _hidden_in(command)
        return state

    def export(self, arguments: list[str], state: _State) -> _State:
        unexport = False
        for word in arguments:
            if word.startswith("-"):
                unexport = unexport or "n" in word
                continue
            name, has_value, value = word.partition("=")
            if name != AUTH_VARIABLE:
                continue
            if unexport:
                state = self.changed(state, _State(state.value if not has_value else value, False))
            else:
                state = self.changed(state, _State(value if has_value else state.value, True))
        return state

    def changed(self, state: _State, new: _State) -> _State:
        """`new`, or unknown where it differs from `state` once a compound command may skip it."""
        return state.join(new) if self.conditional else new


def _is_assignment(word: str) -> bool:
    name, sep, _ = word.partition("=")
    return bool(sep) and bool(_NAME.match(name))


def _sets_allexport(word: str) -> bool:
    return word == "allexport" or (word.startswith("-") and not word.startswith("--") and "a" in word)


def _unwrap(command: str, arguments: list[str], environment: Value) -> tuple[Value, list[str]]:
    """The environment and the command that `env`/`exec`/`nohup`/`command`/`time` go on to run."""
    index = 0
    while index < len(arguments):
        word = arguments[index]
        if word == "--":
            index += 1
            break
        if command == "env" and word in ("-i", "--ignore-environment", "-"):
            environment = None
        elif command == "env" and word in ("-u", "--unset"):
            if index + 1 < len(arguments) and arguments[index + 1] == AUTH_VARIABLE:
                environment = None
            index += 1
        elif command == "env" and word.startswith("--unset="):
            environment = None if word.partition("=")[2] == AUTH_VARIABLE else environment
        elif command == "env" and _is_assignment(word):
            name, _, value = word.partition("=")
            environment = value if name == AUTH_VARIABLE else environment
        elif command == "exec" and word == "-a":
            index += 1
        elif command == "exec" and word == "-c":
            environment = None
        elif not word.startswith("-"):
            break
        elif command == "env":
            environment = UNKNOWN  # an env option not followed here (-S, -C, ...)
        index += 1
    return environment, arguments[index:]


def _basename(word: str) -> str:
    return word.rsplit("/", 1)[-1]


def _mentions_ray_start(words: list[str]) -> bool:
    """`ray` and then `start` among the words, or a word holding both (`bash -c "ray start"`)."""
    cleaned = [word.strip("`'\"$(){}") for word in words]
    for index, word in enumerate(cleaned):
        if re.search(r"(^|[\s/;&|`(])ray\s+(\S+\s+)*start\b", word):
            return True
        if _basename(word) == "ray" and "start" in cleaned[index + 1:]:
            return True
    return False


def _hidden_in(command: str) -> UnclearCommand:
    shown = command if len(command) <= 40 else command[:37] + "..."
    return UnclearCommand(f"`ray start` appears inside `{shown} ...`, which this check cannot follow")
