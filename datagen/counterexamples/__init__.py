"""Targeted counterexample sets from a model's failures on an eval.

failures (read and check) -> clusters (embed, k-means, name) -> allocate (budget per cluster) ->
plan (clusters, budgets, training neighbours) -> expand (prompt rows from the templates). The
`counterexample` stage then checks the generated problems and the builders write the targeted set
and the fix/failure DPO pairs.
"""
