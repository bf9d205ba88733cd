"""Does a run make the policy better? Pairwise judgements in both orders, win rates (raw and
length-controlled), Bradley-Terry ratings on the Elo scale, ROUGE and accuracy, each with a
paired-bootstrap confidence interval over prompts. `mpo-fast eval` drives it (runner.py)."""
from .bootstrap import Estimate, bootstrap, mean_with_ci
from .length_control import lc_win_rate
from .pairwise import Outcome, PairRecord, Position, combine, summarise_pairs
from .ratings import Comparison, Ratings, rate

__all__ = ["Comparison", "Estimate", "Outcome", "PairRecord", "Position", "Ratings", "bootstrap", "combine",
           "lc_win_rate", "mean_with_ci", "rate", "summarise_pairs"]
