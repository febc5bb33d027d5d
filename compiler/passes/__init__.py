"""Compiler passes. Each module holds one pass: a function Program -> PassResult.

The default pipeline is the list in `ttsc.compiler.pipeline`.
"""
