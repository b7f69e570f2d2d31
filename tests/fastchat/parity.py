"""FastChat's own code (fschat 0.2.36) on camelid's files, for crates/camelid/tests/fastchat_parity.rs.

Usage: parity.py elo BATTLES.json ROUNDS | agreement HUMAN.json GPT4.json | show single|pairwise FILE
Prints one JSON object. Only FastChat's model-loading module and what it pulls in (torch,
transformers, ...) are stubbed: the compared functions never call them.
"""
import importlib.machinery
import json
import sys
import types


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Stub(f"{self.__name__}.{name}")

    def __call__(self, *args, **kwargs):
        return _Stub("call")


class _StubFinder:
    ROOTS = ("torch", "transformers", "accelerate", "peft", "psutil")

    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in self.ROOTS or name == "fastchat.model.model_adapter":
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Stub(spec.name)

    def exec_module(self, module):
        pass


sys.meta_path.insert(0, _StubFinder())


def elo(path, rounds):
    import numpy as np
    import pandas as pd
    import sklearn.linear_model
    from fastchat.serve.monitor import elo_analysis

    battles = pd.read_json(path)  # as `elo_analysis --clean-battle-file` reads it
    out = {}
    # FastChat's fit as it runs: scikit-learn's lbfgs stops at its default tolerance.
    selected = battles.sort_values(ascending=True, by=["tstamp"])
    selected = selected[selected["anony"]].reset_index(drop=True)
    out["bt_default_solver"] = elo_analysis.compute_elo_mle_with_tie(selected).to_dict()

    # The same objective solved to its optimum: only the solver's settings change.
    class Converged(sklearn.linear_model.LogisticRegression):
        def __init__(self, **kwargs):
            super().__init__(solver="newton-cholesky", tol=1e-13, max_iter=1000, **kwargs)

    sklearn.linear_model.LogisticRegression = Converged
    np.random.seed(42)  # as elo_analysis's __main__
    r = elo_analysis.report_elo_analysis_results(
        battles.to_dict("records"), rating_system="bt", num_bootstrap=rounds
    )
    table = r["leaderboard_table_df"]
    out["online"] = r["elo_rating_online"]
    out["rating"] = table["rating"].to_dict()
    out["q025"] = table["rating_q025"].to_dict()
    out["q975"] = table["rating_q975"].to_dict()
    out["num_battles"] = {k: int(v) for k, v in table["num_battles"].items()}
    return out


def agreement(human_path, gpt4_path):
    from fastchat.llm_judge import compute_agreement as ca

    votes = [json.load(open(human_path)), json.load(open(gpt4_path))]
    data = ca.get_mt_bench_votes_data(votes)
    out = {}
    for j1, j2 in [("gpt4-pair", "human"), ("human", "human")]:
        for turn in (0, 1):
            for name, ban in (("with_ties", []), ("without_ties", ["tie"])):
                agree, total = ca.get_mt_bench_agreement(data[turn], j1, j2, ban=ban)
                out[f"{j1}/{j2}/{turn + 1}/{name}"] = [int(agree), int(total)]
    return out


def show(mode, path):
    import argparse
    from fastchat.llm_judge import show_result

    frames = []
    # show_result prints its tables: keep the DataFrames it prints.
    show_result.print = lambda *a, **k: frames.extend(x for x in a if hasattr(x, "to_dict"))
    args = argparse.Namespace(
        bench_name="mt_bench", input_file=path, judge_model="gpt-4",
        baseline_model=None, model_list=None, mode=mode,
    )
    if mode == "single":
        show_result.display_result_single(args)
        t1, t2, avg = frames
        return {
            "turn1": {m: float(v) for (m, _), v in t1["score"].items()},
            "turn2": {m: float(v) for (m, _), v in t2["score"].items()},
            "overall": {m: float(v) for m, v in avg["score"].items()},
        }
    show_result.display_result_pairwise(args)
    (table,) = frames
    return {
        m: {k: float(v) for k, v in row.items()} for m, row in table.to_dict("index").items()
    }


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "elo":
        result = elo(sys.argv[2], int(sys.argv[3]))
    elif cmd == "agreement":
        result = agreement(sys.argv[2], sys.argv[3])
    elif cmd == "show":
        result = show(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(f"unknown command {cmd}")
    print(json.dumps(result))
