"""The ground every layer stands on: vocabularies shared by the language, the
compiler, the kernels and the runtime, and nothing that depends on any of them.

    errors        source positions, diagnostics, UserError (exit status 2)
    sampling      SamplingParams: every sampling setting, its default and its bounds
    knobs         Choice / Range / Auto: a setting a search space leaves open
    prompts       prompt templates, their holes, which op fills which hole,
                  the shipped default prompts, and rendering into a Prompt
    specs         model spec strings: forms, checking, canonical form
    capabilities  what an engine can do, and which op needs what
    paths         the ttsc cache directory and its rooms

Layering (tests/test_layers.py enforces it): common <- dsl <- kernels <-
compiler <- runtime <- ttsc (API and CLI). A module imports only from its own
layer and the layers left of it.
"""
