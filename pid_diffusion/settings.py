"""Options declared once, as typed configuration fields, and the command-line parsers made from them.

An option is a dataclass field made by `option(default, help)`: its name is the flag's (the
original's flag names), its type annotation the flag's type, its default the flag's default; the
metadata says whether it defines the run (a resumed run must keep it: `defining_settings`) and
whether a `--speed` preset sets it. A field made by `setting(...)` is part of the configuration
without a flag (derived values, constants of the method).

A generated parser starts every flag at None, so after parsing, a flag is *given* exactly when its
value is not None: no scan of argv, and abbreviations are refused by the parser itself
(`allow_abbrev=False`). `parse` fills the flags not given with their declared defaults.
"""

import argparse
import dataclasses
import sys

HELP, DEFINES_RUN, PRESET, GROUP = "help", "defines_run", "preset", "group"
IGNORED_HELP = "accepted for compatibility; PID ignores it"
IGNORED_GROUP = "accepted for compatibility with the original, ignored by PID"
"""--help lists options in groups: each class's HELP_GROUP (or an option's own `group`), these last."""


def option(default, help_text=None, *, defines_run=False, preset=False, group=None):
    """A configuration field that is also the flag --<field name>. `help_text` None: the original
    accepts the flag and PID ignores it (a warning says so when it is given). `preset`: a --speed
    preset sets it unless it is given. `group`: its --help group, when not its class's HELP_GROUP."""
    return dataclasses.field(default=default, metadata={HELP: help_text, DEFINES_RUN: defines_run, PRESET: preset,
                                                        GROUP: group})


def setting(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING, defines_run=False):
    """A configuration field without a flag."""
    return dataclasses.field(default=default, default_factory=default_factory, metadata={DEFINES_RUN: defines_run})


def redefault(config_class, name, default):
    """The option `name` of `config_class` with another default (a subclass's own default, same flag)."""
    declared = next(f for f in dataclasses.fields(config_class) if f.name == name)
    return dataclasses.field(default=default, metadata=declared.metadata)


def options_of(config_class):
    """The flag fields of a configuration class, in declaration order."""
    return [f for f in dataclasses.fields(config_class) if HELP in f.metadata]


def help_group(config_class, field):
    """The --help group of an option: its own, else the HELP_GROUP of the class that declares it first."""
    if field.metadata.get(GROUP):
        return field.metadata[GROUP]
    owner = next(c for c in reversed(config_class.__mro__) if field.name in c.__dict__.get("__annotations__", {}))
    if not hasattr(owner, "HELP_GROUP"):
        raise TypeError(f"{owner.__name__} declares options but no HELP_GROUP (the title of its --help group)")
    return owner.HELP_GROUP


def defining_settings(config_class):
    """The names of the fields that define what a run learns."""
    return tuple(f.name for f in dataclasses.fields(config_class) if f.metadata.get(DEFINES_RUN))


def preset_options(config_class):
    """{name: declared default} of the options a --speed preset sets."""
    return {f.name: f.default for f in options_of(config_class) if f.metadata[PRESET]}


def str2bool(value):
    if isinstance(value, bool):
        return value
    lowered = value.lower()
    if lowered in ("yes", "true", "t", "y", "1"):
        return True
    if lowered in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {value!r}")


FLAG_TYPES = {bool: str2bool, int: int, float: float, str: str}


def _flag_type(field):
    kind = field.type if isinstance(field.type, type) else type(field.default)
    if kind not in FLAG_TYPES:
        raise TypeError(f"option {field.name}: flags are bool, int, float or str, not {kind}")
    return kind


class OptionParser(argparse.ArgumentParser):
    """A script's parser: the options of the configuration classes it is given, nothing else."""

    def __init__(self, doc, *config_classes, presets=False, group_order=()):
        """`presets`: the script has --speed, which sets the preset options that are not given. `group_order`:
        --help group titles in the order shown (others follow in the order added; the ignored options last)."""
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
                         usage="%(prog)s [options]")
        self.declared, self.ignored, self.presets, self.groups = {}, set(), presets, {}
        self.group_order = list(group_order)
        for config_class in config_classes:
            self.add_options(config_class)

    def add_options(self, config_class, only=None, ignored=False):
        """Add the options of `config_class` (or those named in `only`); `ignored`: this script accepts
        them, as the original's did, and ignores them. A name already added is refused."""
        for field in options_of(config_class):
            if only is not None and field.name not in only:
                continue
            if field.name in self.declared:
                raise ValueError(f"--{field.name} is declared twice ({config_class.__name__})")
            self.declared[field.name] = field
            if ignored or field.metadata[HELP] is None:
                self.ignored.add(field.name)
            kind = _flag_type(field)
            shown = "set by --speed" if self.presets and field.metadata[PRESET] else repr(field.default)
            text = f"{IGNORED_HELP if field.name in self.ignored else field.metadata[HELP]} (default: {shown})"
            title = IGNORED_GROUP if field.name in self.ignored else help_group(config_class, field)
            if title not in self.groups:
                self.groups[title] = self.add_argument_group(title)
            self.groups[title].add_argument(f"--{field.name}", default=None, type=FLAG_TYPES[kind],
                                            metavar=kind.__name__.upper(),
                                            help=text.replace("%", "%%"))  # argparse %-formats help texts
        return self

    def format_help(self):
        """The help with its groups in `group_order`, the options PID ignores last."""
        def rank(group):
            if group not in self.groups.values():  # argparse's own (-h)
                return -1
            if group.title == IGNORED_GROUP:
                return len(self.group_order) + 1
            return self.group_order.index(group.title) if group.title in self.group_order else len(self.group_order)
        self._action_groups.sort(key=rank)  # stable: unlisted groups in the order added
        return super().format_help()

    def parse(self, argv=None):
        """(namespace with every option's value, the names of the options given). Warns once about
        given options that PID ignores."""
        namespace = self.parse_args(sys.argv[1:] if argv is None else argv)
        given = {name for name in self.declared if getattr(namespace, name) is not None}
        for name, field in self.declared.items():
            if name not in given:
                setattr(namespace, name, field.default)
        ignored = sorted(given & self.ignored)
        if ignored:
            print(f"warning: accepted but ignored by PID (as in the original): {', '.join('--' + n for n in ignored)}",
                  file=sys.stderr)
        return namespace, given


def values_for(config_class, namespace):
    """{name: value} of `namespace` for the options of `config_class`."""
    return {f.name: getattr(namespace, f.name) for f in options_of(config_class)}
