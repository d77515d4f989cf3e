"""``tuneforge doctor``: is this machine, this recipe, or this finished run fit?

- :mod:`~tuneforge.apps.doctor.checks`: the machine (libraries, CPU features, bf16 speed, GPU, disk), the
  recipe's validation and known-bad combinations, and which preflight runs;
- :mod:`~tuneforge.apps.doctor.preflight`: a few optimizer steps of a classification recipe on its own rows;
- :mod:`~tuneforge.apps.doctor.generative`: the same for sft / causal-lm, with one example's loss mask shown;
- :mod:`~tuneforge.apps.doctor.run_folder`: a finished run's integrity record and files;
- :mod:`~tuneforge.apps.doctor.report`: the findings (:class:`Check`, :class:`Report`).
"""
