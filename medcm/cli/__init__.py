"""The composition root: the `medcm` command's parser and verbs over the case store (`commands`), the verbs
on data sets and checkpoints (`model_commands`), `medcm import` (`import_command`), the options several verbs
share (`options`), and the review app's start-up and the demo (`serve`). The only medcm code that imports the
case store (`db/`) and the app (`ui/`); nothing in medcm imports this package."""

from medcm.cli.commands import main

__all__ = ["main"]
