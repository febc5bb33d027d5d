"""The small search space `ttsc search`'s tests run on, with and without Ray:
12 configurations of the tiny random model."""

SPACE = '''model policy = "tiny-random"
prompt solve = "{question} Answer:"
prompt terse = "{question}"

strategy space(question) {
    s = generate(policy, choice(solve, terse), n=choice(1, 2, 4), temperature=choice(0.3, 0.7),
                 max_tokens=8)
    return vote(extract(s, number))
}
'''
