"""Knowledge distillation: logit, sequence and feature losses, objectives, teachers and the teacher-logit cache."""
from edgekd.distill.cache import CachedLogits, TeacherCache, check_cache_allowed, load_or_build, tensor_sha256
from edgekd.distill.divergences import ForwardKL, GeneralizedJSD, ReverseKL, divergence
from edgekd.distill.features import (AttentionTransfer, FeatureTap, HintLoss, RelationalKD, SimilarityPreserving,
                                     attention_map)
from edgekd.distill.losses import (DIST, LOSSES, CrossEntropy, DecoupledKD, SoftTargetKD, TopKLogits,
                                   standardize_logits)
from edgekd.distill.objective import Objective, Term, build_objective
from edgekd.distill.teachers import (EnsembleTeacher, OnnxTeacher, Teacher, TorchScriptTeacher, TorchTeacher,
                                     as_teacher, load_state_dict_file, load_teacher)
from edgekd.distill.mutual import MutualObjective, MutualPeers, born_again, train_mutual

__all__ = [
    "AttentionTransfer", "CachedLogits", "CrossEntropy", "DIST", "DecoupledKD", "EnsembleTeacher", "FeatureTap",
    "ForwardKL", "GeneralizedJSD", "HintLoss", "LOSSES", "Objective", "OnnxTeacher", "RelationalKD", "ReverseKL",
    "SimilarityPreserving", "SoftTargetKD", "Teacher", "TeacherCache", "Term", "TopKLogits", "TorchScriptTeacher",
    "TorchTeacher", "as_teacher", "attention_map", "build_objective", "check_cache_allowed", "divergence",
    "load_or_build", "load_state_dict_file", "load_teacher", "standardize_logits", "tensor_sha256",
]
