"""The composition root: the `medcm` command's verbs (`commands`), the review app's start-up and the demo
(`serve`). The only medcm code that imports the case store (`db/`) and the app (`ui/`); nothing in
medcm imports this package."""

from medcm.cli.commands import main

__all__ = ["main"]
