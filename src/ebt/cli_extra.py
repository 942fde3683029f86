"""Imports the modules that register further `ebt` subcommands (each keeps its CLI next to its code)."""
import ebt.images.cli  # noqa: F401,E402  (denoise, eval-denoise)
import ebt.experiments  # noqa: F401,E402  (experiment s2-ablation)
import ebt.thinking_eval  # noqa: F401,E402  (eval thinking, energy)
import ebt.bench  # noqa: F401,E402  (bench train, bench generate)
