"""Text normalization shared by training and serving.

The confidence model never sees raw text: :func:`normalize` runs before scikit-learn fits it and
before onnxruntime scores with it, so both see exactly the same string. That is what makes the
exported model agree with the fitted one on messy input: scikit-learn's ``char`` analyzer collapses
whitespace runs itself while the converted ONNX tokenizer does not, and case folding in the ONNX
graph depends on the process locale. Doing both here, in Python, removes the difference.

Changing :func:`normalize` changes what every model was trained on: bump :data:`FEATURE_VERSION`,
which each model's manifest records, and retrain. The same holds for :func:`prompt_features` and
:data:`PROMPT_FEATURES_VERSION`; a version that only appends columns lets older models be
re-exported with weight 0 on the new ones (``python -m cascade.training.reexport``).
"""

from __future__ import annotations

import itertools
import math
import re
import unicodedata

__all__ = [
    "ANCHORED_FEATURES",
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "MAX_CHARS",
    "PROMPT_FEATURES_VERSION",
    "normalize",
    "prompt_features",
]

FEATURE_VERSION = "norm-v1:nfkc+ws+lower+4000"
"""Identifies the normalization below; a manifest whose value differs needs a retrained model."""

MAX_CHARS = 4000
"""Normalized text is cut to this many characters: the start of a prompt carries the task."""

# Raw text beyond this is never looked at, so a megabyte prompt costs what a 16 kB one does.
# Normalization rarely shrinks text by more than 4x (only long whitespace runs do).
_RAW_LIMIT = 4 * MAX_CHARS


def normalize(text: str) -> str:
    """Return ``text`` in the form the confidence model is trained and served on.

    NFKC-normalized (full-width letters, ligatures and compatibility forms folded), every run of
    whitespace (spaces, tabs, newlines, Unicode spaces) turned into one space, stripped,
    lower-cased and cut to :data:`MAX_CHARS` characters.
    """
    text = unicodedata.normalize("NFKC", text[:_RAW_LIMIT])
    # str.split() splits on exactly what str.isspace() accepts and drops the ends; it is ~4x
    # faster than re.sub(r"\s+", " ", ...). rstrip: the cut may end on a space.
    return " ".join(text.split()).lower()[:MAX_CHARS].rstrip()


PROMPT_FEATURES_VERSION = "prompt-features-v2"
"""Identifies :func:`prompt_features`; a manifest whose value differs needs a retrained model.
v2 added the last three columns (:data:`ANCHORED_FEATURES`) to v1's 25."""

FEATURE_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "log_lines",
    "digit_share",
    "math_symbol_share",
    "log_latex_commands",
    "log_question_marks",
    "ends_with_question",
    "starts_with_wh_word",
    "starts_with_instruction",
    "log_code_markers",
    "log_choice_lines",
    "log_sentences",
    "mean_word_length",
    "long_word_share",
    "distinct_word_share",
    "uppercase_share",
    "log_numbers",
    "commas_per_word",
    "non_ascii_share",
    "punctuation_share",
    "asks_how_many",
    "log_constraint_words",
    "has_dollar",
    "indented_line_share",
    "small_talk_share",
    "expert_term_share",
    "short_chat",
)
"""The columns :func:`prompt_features` returns, in order."""

ANCHORED_FEATURES: tuple[str, ...] = ("small_talk_share", "expert_term_share", "short_chat")
"""Columns that benchmark traffic barely exercises (greetings and thanks, expert vocabulary,
short chat): training fits them on authored obvious prompts as well as on traffic (see
:mod:`cascade.training.feature_model`)."""

_WORD = re.compile(r"[^\W\d_]+")
_NUMBER = re.compile(r"\d[\d.,]*")
_CHOICE = re.compile(r"(?m)^[ \t]*\(?[a-eA-E][).:][ \t]")
_LATEX = re.compile(r"\\[a-zA-Z]+|\$[^$\n]+\$")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_WH_WORDS = frozenset(("what", "who", "when", "where", "which", "why", "how", "whom", "whose"))
_INSTRUCTIONS = frozenset(
    (
        "write", "compute", "calculate", "solve", "find", "explain", "describe", "prove",
        "implement", "create", "generate", "list", "give", "summarize", "translate", "determine",
        "evaluate", "simplify",
    )
)  # fmt: skip
_CODE_WORDS = frozenset(("def", "return", "import", "class", "function", "int", "str", "print"))
_CODE_SYMBOLS = ("```", "=>", "{", "}", ";\n")
_CONSTRAINT_WORDS = frozenset(
    (
        "must", "should", "exactly", "least", "most", "only", "except", "not", "each", "every",
        "all", "both", "neither", "unless", "if",
    )
)  # fmt: skip


def _lexicon(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _pairs(text: str) -> frozenset[tuple[str, ...]]:
    """Word pairs written ``first+second``, matched against consecutive words."""
    return frozenset(tuple(pair.split("+")) for pair in text.split())


# Greetings, thanks, farewells, reactions and chat about how one feels, in the languages a chat
# most often opens in.
# Matched as whole words (letter runs, lower-cased) or as the word pairs below.
_SMALL_TALK = _lexicon(
    """
    hi hii hiya hello helo hey heya howdy greetings yo sup gm goodmorning goodnight gn goodbye bye
    byebye cya farewell thanks thank thankyou thanx thx ty tysm cheers appreciate appreciated
    welcome sorry congrats congratulations lol haha hahaha hehe lmao wow yay ok okay cool awesome
    omg brb gtg ttyl ya nite hru wbu wassup whatsup bored boring tired sleepy hungry lonely sad
    excited chat chatting talk weekend vacation weather
    hola buenos buenas gracias adios adiós chao saludos bonjour bonsoir salut merci coucou revoir
    hallo servus moin guten danke tschüss tschuss ciao buongiorno buonasera buonanotte grazie
    arrivederci salve olá oi obrigado obrigada tchau hoi bedankt hej hei moi tak takk tack
    merhaba selam namaste namaskar dhanyavad shukriya salaam shukran marhaba shalom toda jambo
    asante ahoj cześć dziękuję привет здравствуйте спасибо пока こんにちは こんばんは おはよう
    おはようございます ありがとう ありがとうございます 你好 您好 谢谢 谢谢你 再见 早上好
    안녕하세요 안녕
    감사합니다 고마워요 مرحبا شكرا السلام γεια ευχαριστώ
    """
)
_SMALL_TALK_PAIRS = _pairs(
    """
    good+morning good+afternoon good+evening good+night see+you take+care bom+dia boa+noite
    boa+tarde buenos+días dzień+dobry
    """
)
# Vocabulary of work a small model should not be trusted with: proofs and research mathematics,
# derivations, concurrency, operating systems and storage, compilers, distributed systems,
# formal verification, cryptography, optimization. Written for breadth, not from any prompt set.
_EXPERT = _lexicon(
    """
    prove proves proved proven proving proof proofs disprove disproves theorem theorems lemma
    lemmas corollary corollaries conjecture conjectures rigorous rigorously rigor rigour formally
    formalize formalise formalized formalization formalisation derive derives deriving derivation
    derivations deduce axiom axioms axiomatic contradiction bijection bijective injective
    surjective qed iff isomorphism isomorphisms isomorphic homomorphism homomorphisms
    automorphism automorphisms endomorphism homology cohomology homotopy homeomorphic
    homeomorphism manifold manifolds topology topological compactness hausdorff lebesgue
    measurable banach hilbert sobolev riemannian eigenvalue eigenvalues eigenvector eigenvectors
    spectral irrational irrationality transcendental uncountable countably convergence converges
    convergent divergence diverges divergent uniformly differentiable integrable asymptotic
    asymptotics asymptotically galois sylow abelian nilpotent diophantine combinatorics
    lagrangian hamiltonian schrodinger relativistic relativity quantum renormalization
    renormalisation perturbation perturbative thermodynamic thermodynamics entropy stochastic
    martingale martingales variational posterior estimator estimators likelihood bayesian
    backpropagation wavefunction tensor tensors undecidable undecidability decidable decidability
    computability complexity amortized optimality invariant invariants
    concurrent concurrency concurrently parallelism parallelize multithreaded multithreading
    thread threads threaded threading mutex mutexes semaphore semaphores spinlock spinlocks atomic
    atomics atomically deadlock deadlocks deadlocked livelock lockless linearizable
    linearizability rcu kernel syscall syscalls allocator allocators malloc mmap paging scheduler
    schedulers interrupt interrupts dma firmware filesystem filesystems fsync epoll uring posix
    cgroups hypervisor hypervisors virtualization numa simd vectorized mvcc transactional
    serializable serializability compiler compilers jit bytecode lexer codegen ssa llvm monad
    monads unification consensus paxos raft byzantine quorum quorums replication replicated
    replica replicas failover sharding sharded idempotent idempotency crdt crdts tla coq isabelle
    dafny agda hoare smt soundness cryptographic cryptography cryptographically encryption encrypt
    decrypt decryption cipher ciphers ciphertext plaintext aes rsa elliptic ecdsa ecdh nonce
    nonces hmac aead gcm chacha tls optimize optimizes optimized optimizing optimizer optimizers
    optimization optimizations optimisation optimise optimal optimum minimize minimizes minimizing
    minimise maximize maximizes maximizing maximise convex nonconvex makespan knapsack justify
    riemann zeta adic sheaf sheaves functor functors ergodic normed orthonormal covariance navier
    bellman kalman journaling coherence slab dpdk ebpf rdma leaderless distributed starvation
    interpreter parser webassembly wasm lisp oaep montgomery formulate formulation futex futexes
    ipc kqueue iocp mmu tlb preemptive preemption rtos bootloader microkernel unikernel seccomp
    sandboxing jemalloc tcmalloc avx cuda openmp mpi nonblocking knot knots simplicial noetherian
    artinian dedekind ramification fredholm brownian ramsey chromatic combinatorial
    """
)
_EXPERT_PAIRS = _pairs(
    """
    np+hard np+complete polynomial+time dynamic+programming approximation+algorithm
    approximation+ratio lock+free wait+free thread+safe data+race race+condition
    race+conditions memory+ordering memory+order memory+model memory+barrier hazard+pointer
    hazard+pointers aba+problem device+driver kernel+module virtual+memory page+table page+tables
    zero+copy storage+engine write+ahead b+tree garbage+collector garbage+collection
    snapshot+isolation phase+commit type+inference type+checker type+system lambda+calculus
    dependent+types register+allocation register+allocator code+generator code+generation
    escape+analysis dataflow+analysis abstract+interpretation tail+calls leader+election
    fault+tolerant fault+tolerance exactly+once vector+clocks
    eventual+consistency strong+consistency network+partition network+partitions clock+skew
    commit+protocol formal+verification model+checking model+checker model+check
    separation+logic temporal+logic loop+invariant side+channel side+channels constant+time
    timing+attack timing+attacks timing+leaks zero+knowledge post+quantum key+exchange
    diffie+hellman signature+scheme double+ratchet integer+program integer+programming
    linear+program linear+programming mixed+integer show+that find+all determine+all
    classify+all closed+form first+principles metric+space inner+product category+theory
    measure+theory wave+equation heat+equation field+equations partition+function
    maximum+likelihood policy+gradient gaussian+process file+system file+systems
    crash+consistent crash+consistency crash+recovery page+cache buffer+pool kernel+bypass
    context+switch false+sharing copy+on value+store consistent+hashing causal+consistency
    sequential+consistency tunable+consistency read+repair hinted+handoff split+brain
    partition+tolerance thread+pool work+stealing global+lock global+locks lock+contention
    padding+oracle cache+attack cache+attacks scalar+multiplication buffer+overflow use+after
    chosen+ciphertext key+derivation shared+memory inter+process memory+mapped cache+line
    cache+coherence page+fault event+loop real+time reference+counting undefined+behavior
    fundamental+group covering+space fiber+bundle algebraic+geometry algebraic+topology
    algebraic+variety number+field class+number modular+form modular+forms lie+algebra lie+group
    representation+theory character+table spectral+sequence exact+sequence partial+differential
    boundary+value generating+function planar+graph
    """
)
_SHORT_CHAT_WORDS = 10
"""A message of this many words or more is not short (``short_chat`` is 0)."""


def _byte_class(chars: str) -> bytes:
    """The bytes a ``bytes.translate(None, delete=...)`` call deletes to keep only ``chars``."""
    keep = set(chars.encode("ascii"))
    return bytes(b for b in range(256) if b not in keep)


_NOT_DIGIT = _byte_class("0123456789")
_NOT_MATH = _byte_class("+-*/=^<>%")
_NOT_UPPER = _byte_class("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_NOT_PUNCT = _byte_class("!\"#&'()*,-./:;?@[\\]_{}")
_NOT_HIGH = bytes(range(128))  # deleting every ASCII byte leaves the UTF-8 bytes of the rest
# Lower-case ASCII letters stay, every other byte becomes a space (for ASCII text only).
_SPACE_BUT_LETTERS = bytes(b if 0x61 <= b <= 0x7A else 0x20 for b in range(256))


def prompt_features(text: str) -> list[float]:
    """Numbers describing a prompt's form, in the order of :data:`FEATURE_NAMES`.

    Length, digit and math-symbol density, question form, code, multiple-choice and LaTeX
    markers, sentence and constraint counts, word length and variety: properties that say how
    hard a prompt is without knowing its topic, so a model on them transfers across tasks better
    than one on words. Reads the NFKC form of the first :data:`MAX_CHARS` characters (case and
    line breaks kept); shares are per UTF-8 byte of that text (ASCII classes only).

    The last three columns are the exception, for prompts benchmarks never hold: the share of
    words that are greetings, thanks or chat (``small_talk_share``), the share that are terms of
    proofs, derivations, concurrency, systems, compilers, distributed systems, verification,
    cryptography or optimization (``expert_term_share``; pairs such as "lock free" count as
    one term), and how short a message under ten words is when it asks a question or chats
    (``short_chat``: ``1 - words / 10``, else 0).
    """
    text = text[:_RAW_LIMIT]
    ascii_only = text.isascii()
    if not ascii_only:  # NFKC leaves ASCII as it is
        text = unicodedata.normalize("NFKC", text)
    text = text[:MAX_CHARS]
    raw = text.encode("utf-8")
    size = max(len(raw), 1)
    low = text.lower()
    high = raw.translate(None, _NOT_HIGH)  # the UTF-8 bytes of the non-ASCII characters
    if ascii_only or not any(map(str.isalnum, high.decode("utf-8"))):
        # No letter or number outside ASCII (at most curly quotes, dashes, emoji...): the
        # ASCII letter runs are the words _WORD would find, at several times its speed.
        words = raw.lower().translate(_SPACE_BUT_LETTERS).decode("ascii").split()
    else:
        words = _WORD.findall(low)
    n_words = max(len(words), 1)
    first = words[0] if words else ""
    lines = text.split("\n")
    n_filled = sum(map(bool, map(str.strip, lines)))
    # map() with a C-level predicate instead of generator expressions: this runs per request.
    code_words = sum(map(_CODE_WORDS.__contains__, words))
    pairs = list(itertools.pairwise(words))
    small_talk = sum(map(_SMALL_TALK.__contains__, words))
    small_talk += 2 * sum(map(_SMALL_TALK_PAIRS.__contains__, pairs))
    expert = sum(map(_EXPERT.__contains__, words)) + sum(map(_EXPERT_PAIRS.__contains__, pairs))
    ends_with_question = text.rstrip().endswith("?")
    return [
        math.log1p(len(text)),
        math.log1p(len(words)),
        math.log1p(n_filled),
        len(raw.translate(None, _NOT_DIGIT)) / size,
        len(raw.translate(None, _NOT_MATH)) / size,
        math.log1p(len(_LATEX.findall(text))),
        math.log1p(text.count("?")),
        float(ends_with_question),
        float(first in _WH_WORDS),
        float(first in _INSTRUCTIONS),
        math.log1p(code_words + sum(map(text.count, _CODE_SYMBOLS))),
        math.log1p(len(_CHOICE.findall(text))),
        math.log1p(len(_SENTENCE_END.findall(text))),
        sum(map(len, words)) / n_words,
        sum(map(_LONG_WORD.__le__, map(len, words))) / n_words,
        len(set(words)) / n_words,
        len(raw.translate(None, _NOT_UPPER)) / size,
        math.log1p(len(_NUMBER.findall(text))),
        text.count(",") / n_words,
        len(high) / size,
        len(raw.translate(None, _NOT_PUNCT)) / size,
        float("how many" in low or "how much" in low),
        math.log1p(sum(map(_CONSTRAINT_WORDS.__contains__, words))),
        float("$" in text),
        sum(map(_starts_indented, lines)) / max(n_filled, 1),
        min(small_talk / n_words, 1.0),
        min(expert / n_words, 1.0),
        max(0.0, 1.0 - len(words) / _SHORT_CHAT_WORDS) if ends_with_question or small_talk else 0.0,
    ]


_LONG_WORD = 9
"""Letters from which a word counts as long."""


def _starts_indented(line: str) -> bool:
    return line.startswith((" ", "\t"))
