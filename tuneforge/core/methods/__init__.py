"""Fine-tuning methods behind a registry; importing this package registers them all."""

# Import order is the order `tuneforge models`/errors list the methods in.
from tuneforge.core.methods import full  # noqa: F401  (registration)
from tuneforge.core.methods import freeze  # noqa: F401
from tuneforge.core.methods import gradual  # noqa: F401
from tuneforge.core.methods import lora  # noqa: F401
from tuneforge.core.methods import dora  # noqa: F401
from tuneforge.core.methods import adalora  # noqa: F401
from tuneforge.core.methods import ia3  # noqa: F401
from tuneforge.core.methods import adapter  # noqa: F401
from tuneforge.core.methods import prefix  # noqa: F401
from tuneforge.core.methods import prompt  # noqa: F401
from tuneforge.core.methods import ptuning  # noqa: F401
from tuneforge.core.methods.registry import (Method, MethodConfig, PlainModelReader, build_method, method_configs,
                                            method_names, method_spec, register)

__all__ = ["Method", "MethodConfig", "PlainModelReader", "build_method", "method_configs", "method_names",
           "method_spec", "register"]
