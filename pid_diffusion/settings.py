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

HELP, DEFINES_RUN, PRESET = "help", "defines_run", "preset"
IGNORED_HELP = "accepted for compatibility; PID ignores it"


def option(default, help_text=None, *, defines_run=False, preset=False):
    """A configuration field that is also the flag --<field name>. `help_text` None: the original
    accepts the flag and PID ignores it (a warning says so when it is given). `preset`: a --speed
    preset sets it unless it is given."""
    return dataclasses.field(default=default, metadata={HELP: help_text, DEFINES_RUN: defines_run, PRESET: preset})


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

    def __init__(self, doc, *config_classes, presets=False):
        """`presets`: the script has --speed, which sets the preset options that are not given."""
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
        self.declared, self.ignored, self.presets = {}, set(), presets
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
            self.add_argument(f"--{field.name}", default=None, type=FLAG_TYPES[kind], metavar=kind.__name__.upper(),
                              help=text.replace("%", "%%"))  # argparse %-formats help texts
        return self

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
