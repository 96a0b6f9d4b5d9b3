// N-gram scoring kernels for lmlab's backoff models (ARPA semantics), called through ctypes from binary.py.
//
// The model is the sorted tables of tables.py (per order: keys = prefix_row * V + word, log10 prob and backoff)
// plus, optionally, a linear-probing hash per order: S slots of (key, row, prob, backoff) ((key, prob) for the
// highest order, whose row and backoff no lookup needs), empty key = -1, home
// slot ((key * GOLDEN) >> 32) * S >> 32 (Fibonacci hashing, then Lemire's multiply-shift range reduction), so one
// lookup reads one 32-byte slot (KenLM's "probing" keeps prob and backoff in its entries the same way). Without
// it a lookup is a binary search in the sorted keys. Words -> ids: a hash of the vocabulary (FNV-1a 64 of the
// word's UTF-8 bytes; slot value (hash >> 32) << 32 | id, empty = all ones; 2**bits slots, home (h * GOLDEN) >>
// (64 - bits)).
//
// lmlab_ngram_score_stream mirrors tables.log10_stream position by position (the same additions in the same order,
// so the sums are bit-identical); lmlab_ngram_score_text also splits UTF-8 text into lines (\n) and words (ASCII
// space, tab, CR, NUL: lmlab's word scheme, as lmplz) and numbers the words through the vocabulary hash.
#include <algorithm>
#include <cstdint>
#include <vector>

namespace {

constexpr uint64_t GOLDEN = 0x9E3779B97F4A7C15ull;
constexpr uint64_t FNV_OFFSET = 0xcbf29ce484222325ull;
constexpr uint64_t FNV_PRIME = 0x100000001b3ull;
constexpr uint64_t EMPTY_WORD = ~0ull;
constexpr int MAX_ORDER = 64;
constexpr int64_t UNK_ID = 0, BOS_ID = 1, EOS_ID = 2;

struct Slot {  // binary.py's key_slots: one entry of an order's hash
    int64_t key, row;
    double prob, backoff;
};

struct LastSlot {  // the highest order's entries: no longer n-gram extends them, so no row and no backoff
    int64_t key;
    double prob;
};

struct Order {  // binary.py's _Order
    const int64_t* keys;     // sorted, count
    const double* prob;      // log10 probability of each row
    const double* backoff;   // log10 backoff of each row
    int64_t count;
    const void* slots;       // n_slots Slot (LastSlot for the highest order); null: binary search in keys
    int64_t n_slots;
};

struct Model {  // binary.py's _Model
    int64_t order, V;
    const Order* orders;
    const uint64_t* word_starts;  // [V + 1]: word i is bytes [start[i], start[i + 1] - 1) of words
    const uint8_t* words;
    const uint64_t* word_slots;   // [1 << word_bits]
    int64_t word_bits;
    int64_t words_bytes;          // the size of words (a damaged file cannot make the kernel read past it)
    int64_t suffix_closed;        // every n-gram's suffix (its first word dropped) is in the model too (lmplz's
                                  // are): the lookups of a position stop at its first miss
};

struct Found {  // an n-gram's row (-1: absent), log10 prob and backoff
    int64_t row;
    double prob, backoff;
};

inline uint64_t home(const Order& o, int64_t key) {
    const uint64_t h = (static_cast<uint64_t>(key) * GOLDEN) >> 32;
    return (h * static_cast<uint64_t>(o.n_slots)) >> 32;
}

template <class S>
inline const S* probe(const Order& o, int64_t key) {  // the slot holding key, or an empty one
    const S* slots = static_cast<const S*>(o.slots);
    const S* s = slots + home(o, key);
    const S* end = slots + o.n_slots;
    for (int64_t tries = 1; s->key != key && s->key != -1 && tries < o.n_slots; ++tries)  // (bounded: a
        if (++s == end) s = slots;                                                       // damaged file)
    return s;
}

inline Found find(const Order& o, int64_t key, bool last) {
    if (o.slots) {
        if (last) {
            const LastSlot* s = probe<LastSlot>(o, key);
            return s->key != key ? Found{-1, 0.0, 0.0} : Found{0, s->prob, 0.0};
        }
        const Slot* s = probe<Slot>(o, key);
        return s->key != key ? Found{-1, 0.0, 0.0} : Found{s->row, s->prob, s->backoff};
    }
    const int64_t* end = o.keys + o.count;
    const int64_t* it = std::lower_bound(o.keys, end, key);
    if (it == end || *it != key) return {-1, 0.0, 0.0};
    const int64_t r = it - o.keys;
    return {r, o.prob[r], o.backoff[r]};
}

inline int64_t word_id(const Model& m, const uint8_t* w, int64_t len) {
    uint64_t h = FNV_OFFSET;
    for (int64_t i = 0; i < len; ++i) h = (h ^ w[i]) * FNV_PRIME;
    const uint64_t mask = (1ull << m.word_bits) - 1, tag = h >> 32;
    uint64_t s = (h * GOLDEN) >> (64 - m.word_bits);
    for (uint64_t tries = 0; tries <= mask; ++tries) {  // (bounded, and ids and offsets checked: a damaged file)
        const uint64_t e = m.word_slots[s];
        if (e == EMPTY_WORD) return UNK_ID;
        const int64_t id = static_cast<int64_t>(e & 0xffffffffull);
        if ((e >> 32) == tag && id < m.V) {
            const uint64_t a = m.word_starts[id], b = m.word_starts[id + 1] - 1;
            if (b >= a && b <= static_cast<uint64_t>(m.words_bytes) &&
                static_cast<int64_t>(b - a) == len) {  // (words are short: a loop beats a call to memcmp)
                int64_t k = 0;
                while (k < len && m.words[a + k] == w[k]) ++k;
                if (k == len) return id;
            }
        }
        s = (s + 1) & mask;
    }
    return UNK_ID;
}

struct State {  // per order n: the n-gram ending at a position (row -1: absent) and its backoff
    int64_t row[MAX_ORDER + 1];
    double backoff[MAX_ORDER + 1];
    void clear() { std::fill(row, row + MAX_ORDER + 1, -1); }
};

// One position in two halves: `start` computes the keys of every order's lookup (word w at distance `dist` from
// its sentence start; prev = the n-grams ending at the previous position) and starts their memory reads (they are
// independent: none waits on another); `finish` probes, fills cur (the n-grams ending here) and returns log10 p,
// *length = the n-gram length used. Between the two, other sentences' lookups can be started (score_text).
inline void start(const Model& m, int64_t w, int64_t dist, const State& prev, int64_t* key) {
    const int N = static_cast<int>(m.order);
    const bool known = w >= 0 && w < m.V;
    for (int n = 2; n <= N; ++n) {
        const int64_t c = dist >= n - 1 ? prev.row[n - 1] : -1;
        key[n] = (c >= 0 && known) ? c * m.V + w : -1;
        const Order& o = m.orders[n - 1];
        if (key[n] >= 0 && o.slots)
            __builtin_prefetch(static_cast<const char*>(o.slots) +
                               home(o, key[n]) * (n == N ? sizeof(LastSlot) : sizeof(Slot)));
    }
}

inline double finish(const Model& m, int64_t w, int64_t dist, const State& prev, State& cur, const int64_t* key,
                     int* length) {
    const int N = static_cast<int>(m.order);
    const bool known = w >= 0 && w < m.V;
    cur.row[1] = known ? w : -1;
    if (known) cur.backoff[1] = m.orders[0].backoff[w];
    int best = known ? 1 : 0;
    double lp = known ? m.orders[0].prob[w] : 0.0;
    for (int n = 2; n <= N; ++n) {
        const Found f = key[n] >= 0 ? find(m.orders[n - 1], key[n], n == N) : Found{-1, 0.0, 0.0};
        cur.row[n] = f.row;
        cur.backoff[n] = f.backoff;
        if (f.row >= 0) {
            best = n;
            lp = f.prob;
        } else if (m.suffix_closed) {  // no longer n-gram can end here either
            for (int k = n + 1; k <= N; ++k) cur.row[k] = -1;
            break;
        }
    }
    for (int j = std::max(best, 1); j < N; ++j)  // backoffs of the contexts longer than the match (ARPA)
        if (prev.row[j] >= 0 && dist >= j) lp += prev.backoff[j];
    *length = best;
    return lp;
}

inline double step(const Model& m, int64_t w, int64_t dist, const State& prev, State& cur, int* length) {
    int64_t key[MAX_ORDER + 1];
    start(m, w, dist, prev, key);
    return finish(m, w, dist, prev, cur, key, length);
}

}  // namespace

extern "C" {

// tables.log10_stream over a stream of ids and their distances from the sentence start: logp[i], length[i].
void lmlab_ngram_score_stream(const Model* m, const int64_t* stream, const int64_t* dist, int64_t n,
                              double* logp, int64_t* length) {
    State a, b;
    State *prev = &a, *cur = &b;
    a.clear();
    for (int64_t i = 0; i < n; ++i) {
        int len;
        logp[i] = step(*m, stream[i], dist[i], *prev, *cur, &len);
        length[i] = len;
        std::swap(prev, cur);
    }
}

constexpr int LANES = 8;  // sentences scored side by side: their lookups' memory reads overlap

// Score newline-terminated UTF-8 text, each line a sentence <s> w1 .. wk </s>. Optional outputs (null to skip):
// the stream ids, log10 p and n-gram length of every stream position (<s> included, as log10_stream), the words
// of each line, each line's total. totals[4] += (sum of log10 p, predicted tokens, OOV tokens, sum without
// OOVs; the sums line by line in text order). Returns the number of stream positions. LANES lines at a time are
// numbered (words -> ids), then scored in lockstep: position t of every line starts its lookups before any
// finishes, so the cache misses of up to LANES sentences are in flight together.
int64_t lmlab_ngram_score_text(const Model* m, const uint8_t* text, int64_t len, int32_t* ids, double* logp,
                               int8_t* length, int64_t* line_words, double* line_total, double* totals) {
    bool blank[256] = {};
    blank[' '] = blank['\t'] = blank['\r'] = blank[0] = true;
    State states[LANES][2];
    std::vector<int64_t> words[LANES];
    int64_t keys[LANES][MAX_ORDER + 1];
    int64_t pos = 0, line = 0, tokens = 0, oov = 0;
    double total = 0.0, excl = 0.0;
    int64_t i = 0;
    while (i < len) {
        int lanes = 0;
        int64_t base[LANES], longest = 0;
        for (; lanes < LANES && i < len; ++lanes) {  // number up to LANES lines
            std::vector<int64_t>& ws = words[lanes];
            ws.clear();
            ws.push_back(BOS_ID);
            for (;;) {
                while (i < len && blank[text[i]]) ++i;
                if (i >= len || text[i] == '\n') break;
                const int64_t s = i;
                while (i < len && !blank[text[i]] && text[i] != '\n') ++i;
                ws.push_back(word_id(*m, text + s, i - s));
            }
            ws.push_back(EOS_ID);
            if (i < len) ++i;  // the newline
            base[lanes] = pos;
            pos += static_cast<int64_t>(ws.size());
            longest = std::max(longest, static_cast<int64_t>(ws.size()));
            states[lanes][0].clear();
        }
        double sentence[LANES] = {};
        int64_t unknown[LANES] = {};
        double known_sum[LANES] = {};
        for (int64_t t = 0; t < longest; ++t) {
            const State* prev[LANES];
            for (int k = 0; k < lanes; ++k) {
                if (t >= static_cast<int64_t>(words[k].size())) continue;
                prev[k] = &states[k][t & 1];
                start(*m, words[k][t], t, *prev[k], keys[k]);
            }
            for (int k = 0; k < lanes; ++k) {
                if (t >= static_cast<int64_t>(words[k].size())) continue;
                const int64_t w = words[k][t];
                int l;
                const double lp = finish(*m, w, t, *prev[k], states[k][(t + 1) & 1], keys[k], &l);
                if (ids) {
                    ids[base[k] + t] = static_cast<int32_t>(w);
                    logp[base[k] + t] = lp;
                    length[base[k] + t] = static_cast<int8_t>(l);
                }
                if (t > 0) {
                    sentence[k] += lp;
                    if (w == UNK_ID) ++unknown[k]; else known_sum[k] += lp;
                }
            }
        }
        for (int k = 0; k < lanes; ++k, ++line) {  // in text order: the same sums as one line at a time
            const int64_t n = static_cast<int64_t>(words[k].size());
            tokens += n - 1;
            total += sentence[k];
            oov += unknown[k];
            if (line_words) line_words[line] = n - 2;
            if (line_total) line_total[line] = sentence[k];
        }
        for (int k = 0; k < lanes; ++k) excl += known_sum[k];
    }
    totals[0] += total;
    totals[1] += static_cast<double>(tokens);
    totals[2] += static_cast<double>(oov);
    totals[3] += excl;
    return pos;
}

int lmlab_ngram_max_order() { return MAX_ORDER; }

}  // extern "C"
