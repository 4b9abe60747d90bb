"""MkDocs hook: the CLI reference page, generated from ``amazon_visual.cli``'s argparse parsers.

``docs/cli.md`` holds the marker ``<!-- cli-reference -->``; at build time it is replaced by one
section per subcommand (its description, usage line and a table of its options), read from
the very parser ``amazon-visual`` runs, so the page cannot drift from the command.
"""

import argparse
import os

MARKER = "<!-- cli-reference -->"


def _escape(text):
    return " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def _option_names(action):
    if action.option_strings:
        names = ", ".join(f"`{o}`" for o in action.option_strings)
        if action.nargs != 0:
            metavar = action.metavar or action.dest.upper()
            if isinstance(metavar, tuple):
                metavar = " ".join(metavar)
            names += f" `{metavar}`"
        return names
    return f"`{action.metavar or action.dest}`"


def _help(parser, action):
    text = parser._get_formatter()._expand_help(action) if action.help else ""
    if action.choices and not isinstance(action, argparse._SubParsersAction) and "{" not in text:
        text = (text + " " if text else "") + "(one of: " + ", ".join(map(str, action.choices)) + ")"
    return _escape(text)


def subcommands(parser):
    """(name, subparser) of every subcommand, in the order ``--help`` lists them."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.items())
    return []


def section(name, parser, level=2):
    """Markdown for one parser: heading, description, usage and its arguments."""
    out = [f"{'#' * level} `{name}`", ""]
    if parser.description:
        out += [_escape(parser.description), ""]
    out += ["```text", parser.format_usage().strip(), "```", ""]
    rows = [
        a
        for a in parser._actions
        if a.help != argparse.SUPPRESS and not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
    ]
    if rows:
        out += ["| argument | what |", "|---|---|"]
        out += [f"| {_option_names(a)} | {_help(parser, a) or '&nbsp;'} |" for a in rows]
        out.append("")
    return out


def reference():
    """The whole generated reference, as Markdown."""
    from amazon_visual.cli import build_parser

    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "100"  # argparse wraps usage lines to the terminal width: fix it
    try:
        parser = build_parser()
        lines = section("amazon-visual", parser)
        for name, sub in subcommands(parser):
            lines += section(f"amazon-visual {name}", sub)
    finally:
        if saved is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = saved
    return "\n".join(lines)


def on_page_markdown(markdown, page, **kwargs):
    if MARKER in markdown:
        return markdown.replace(MARKER, reference())
    return markdown
