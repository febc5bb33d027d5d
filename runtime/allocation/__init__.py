"""Spending a token budget across a data set: which input gets how many samples.

    votes       votes over samples and their expected accuracy over subsets
    pilot       one-shot: a small pilot per input, scored, looked up in dev bins
    rounds      in rounds: CP-SAT re-plans every open input after each round
                from a dev-fitted vote-state table (what `ttsc eval` runs)
    threshold   the vote-state table's confidence threshold, chosen on dev data
    adaptive    `ttsc eval` with `n=auto` under a data-set token budget
"""
