//! Whether a peer's claimed tokens are what the asked model could have produced, judged from
//! what an independent copy of the model says at chosen positions (teacher forcing: the
//! verifier reads the prompt and the claimed tokens before each position and reports its top
//! alternatives there).
//!
//! Pure logic: the verifier's scores come in, a [`Judgement`] goes out.
//!
//! * A greedy request (`temperature` 0) must have taken the argmax at every position; a claimed
//!   token whose log-probability is within [`GREEDY_TOLERANCE`] of the argmax's counts as a tie
//!   (threads, batch sizes and slots change the last bits of the logits).
//! * A sampled request must have taken a token the sampler allows there — inside `top_k`, inside
//!   the `top_p` nucleus, above `min_p` of the best — with the same tolerance for near-ties; and
//!   over all positions the claimed tokens must not be too unlikely under the distribution that
//!   sampler draws from (a z-score of their log-probabilities, [`Z_LIMIT`]), which catches
//!   another model or a hotter sampler even when every single token is allowed.
//! * An answer that claims it ended (end of sequence) must end where the model can end: greedy,
//!   an end token is the argmax; sampled, an end token is allowed.

use serde_json::Value;
use std::collections::BTreeMap;

/// Log-probability gap (nats) within which two tokens count as tied. Measured: an honest
/// answer re-scored with other thread counts and slot settings stays far inside it (see
/// `bench/verify`); a made-up token is usually several nats below the argmax.
pub const GREEDY_TOLERANCE: f64 = 0.25;

/// How far below its expectation (in standard deviations) the claimed tokens' total
/// log-probability under the requested sampler may fall before the answer is refused.
pub const Z_LIMIT: f64 = 6.0;

/// Fewest sampled positions the z-score is computed over: below this it says too little.
const Z_MIN_POSITIONS: usize = 4;

/// The part of a request's sampler a check reproduces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    /// Temperature; 0 or below is greedy.
    pub temperature: f64,
    /// Only the `top_k` most likely tokens (0: all).
    pub top_k: u32,
    /// Only the smallest set whose probability reaches `top_p`.
    pub top_p: f64,
    /// Only tokens at least `min_p` times as likely as the best.
    pub min_p: f64,
}

/// Ollama's sampler defaults (the ones lucidd's workers apply to an unset option).
const DEFAULT: Sampler = Sampler { temperature: 0.8, top_k: 40, top_p: 0.9, min_p: 0.0 };

impl Sampler {
    /// The sampler a request's Ollama `options` ask for, or why its answers cannot be checked
    /// position by position (penalties and other samplers change the distribution in ways a
    /// re-scoring without the same history does not see).
    pub fn of(options: &BTreeMap<String, Value>) -> Result<Self, String> {
        let number = |key: &str| options.get(key).and_then(Value::as_f64);
        for (key, neutral) in [
            ("repeat_penalty", 1.0),
            ("presence_penalty", 0.0),
            ("frequency_penalty", 0.0),
            ("typical_p", 1.0),
            ("mirostat", 0.0),
        ] {
            if let Some(value) = number(key)
                && (value - neutral).abs() > 1e-9
            {
                return Err(format!("{key} {value} changes the sampler in a way not re-scored"));
            }
        }
        Ok(Self {
            temperature: number("temperature").unwrap_or(DEFAULT.temperature),
            top_k: number("top_k").map_or(DEFAULT.top_k, |k| k.clamp(0.0, u32::MAX as f64) as u32),
            top_p: number("top_p").unwrap_or(DEFAULT.top_p).clamp(0.0, 1.0),
            min_p: number("min_p").unwrap_or(DEFAULT.min_p).clamp(0.0, 1.0),
        })
    }

    /// True for greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// What the answer claims at one position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This token came next.
    Token(u32),
    /// The answer ended here (end of sequence).
    End,
}

/// The verifier's view of one position: its most likely next tokens, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Index into the answer's tokens (the answer's length for the end).
    pub position: usize,
    /// `(token id, log-probability)`, best first, as many as asked for.
    pub top: Vec<(u32, f64)>,
    /// Ids that end generation (for a [`Claim::End`]).
    pub end_ids: Vec<u32>,
}

/// The outcome of a check.
#[derive(Debug, Clone, PartialEq)]
pub enum Judgement {
    /// Every position checked is consistent with the model and sampler.
    Consistent {
        /// Positions checked.
        positions: usize,
        /// The z-score of the sampled positions' log-probabilities (`None` for greedy answers
        /// or too few positions).
        z: Option<f64>,
        /// Its parts, to be summed over many answers of one peer: the claimed tokens' summed
        /// log-probability minus its expectation, and the variance of that sum (both 0 for a
        /// greedy answer).
        deviation: f64,
        /// See `deviation`.
        variance: f64,
    },
    /// The answer could not have come from this model and sampler.
    Inconsistent {
        /// The first position that gave it away (the answer's length for its end; `None` for
        /// the sequence-level statistic).
        position: Option<usize>,
        /// What was wrong, for a person.
        reason: String,
    },
}

/// Judges the claims at `scored` positions of an answer whose tokens are `answer`.
pub fn judge(sampler: &Sampler, answer: &[u32], scored: &[Scored]) -> Judgement {
    let mut stat = ZScore::default();
    for position in scored {
        let claim = match answer.get(position.position) {
            Some(id) => Claim::Token(*id),
            None => Claim::End,
        };
        let outcome = if sampler.is_greedy() {
            greedy(position, claim)
        } else {
            sampled(sampler, position, claim).map(|term| {
                if let Some(term) = term {
                    stat.add(term);
                }
            })
        };
        if let Err(reason) = outcome {
            return Judgement::Inconsistent { position: Some(position.position), reason };
        }
    }
    let z = stat.z();
    if let Some(z) = z
        && z < -Z_LIMIT
    {
        return Judgement::Inconsistent {
            position: None,
            reason: format!(
                "over {} positions the claimed tokens are far less likely under the model and \
                 the requested sampler than sampling makes them (z = {z:.1}): another model, \
                 another quantization or another sampler produced them",
                stat.n
            ),
        };
    }
    Judgement::Consistent {
        positions: scored.len(),
        z,
        deviation: stat.sum - stat.mean,
        variance: stat.variance,
    }
}

/// Log-probability of `id` among `top`, if listed.
fn logprob_of(top: &[(u32, f64)], id: u32) -> Option<f64> {
    top.iter().find(|(t, _)| *t == id).map(|(_, lp)| *lp)
}

fn describe(claim: Claim) -> String {
    match claim {
        Claim::Token(id) => format!("token {id}"),
        Claim::End => "the end of the answer".into(),
    }
}

/// The best log-probability among the claim's tokens (the end is any end token).
fn claimed_logprob(position: &Scored, claim: Claim) -> Option<f64> {
    match claim {
        Claim::Token(id) => logprob_of(&position.top, id),
        Claim::End => position
            .end_ids
            .iter()
            .filter_map(|id| logprob_of(&position.top, *id))
            .max_by(f64::total_cmp),
    }
}

fn greedy(position: &Scored, claim: Claim) -> Result<(), String> {
    let Some(&(best, best_lp)) = position.top.first() else {
        return Err("the verifier reported no probabilities".into());
    };
    let claimed = claimed_logprob(position, claim);
    match claimed {
        Some(lp) if best_lp - lp <= GREEDY_TOLERANCE => Ok(()),
        Some(lp) => Err(format!(
            "greedy decoding takes token {best} here (log-probability {best_lp:.2}), but the \
             answer has {} ({lp:.2})",
            describe(claim)
        )),
        None => Err(format!(
            "greedy decoding takes token {best} here, but the answer has {}, which is not \
             among the model's {} most likely",
            describe(claim),
            position.top.len()
        )),
    }
}

/// One sampled position's term of the z-score: the claimed token's log-probability under the
/// sampler's distribution, its expectation and variance there.
#[derive(Debug, Clone, Copy)]
struct Term {
    log_q: f64,
    mean: f64,
    variance: f64,
}

#[derive(Debug, Default)]
struct ZScore {
    n: usize,
    sum: f64,
    mean: f64,
    variance: f64,
}

impl ZScore {
    fn add(&mut self, term: Term) {
        self.n += 1;
        self.sum += term.log_q;
        self.mean += term.mean;
        self.variance += term.variance;
    }

    fn z(&self) -> Option<f64> {
        (self.n >= Z_MIN_POSITIONS && self.variance > 1e-12)
            .then(|| (self.sum - self.mean) / self.variance.sqrt())
    }
}

/// Checks a sampled position; `Ok(None)` when it is allowed but says nothing statistically
/// (the claim lies beyond the alternatives reported, or is the end).
fn sampled(sampler: &Sampler, position: &Scored, claim: Claim) -> Result<Option<Term>, String> {
    let top = &position.top;
    let Some(&(_, best_lp)) = top.first() else {
        return Err("the verifier reported no probabilities".into());
    };
    // top_k cuts inside the list when the list reaches it; the nucleus is then taken over the
    // k kept (renormalised, as llama.cpp does). A list shorter than top_k is renormalised by 1,
    // the whole vocabulary: that can only make the nucleus look wider, never narrower.
    let cut = sampler.top_k != 0 && sampler.top_k as usize <= top.len();
    let kept = if cut { &top[..sampler.top_k as usize] } else { &top[..] };
    let norm = if cut { kept.iter().map(|(_, lp)| lp.exp()).sum() } else { 1.0 };
    let Some(lp) = claimed_logprob(position, claim) else {
        // Beyond the alternatives reported: allowed only if top_k does not cut there and they
        // do not already fill the nucleus.
        let listed: f64 = kept.iter().map(|(_, lp)| lp.exp()).sum::<f64>() / norm;
        if cut || (sampler.top_p < 1.0 && listed >= sampler.top_p) {
            return Err(format!(
                "{} is outside what the requested sampler (top_k {}, top_p {}) allows here",
                describe(claim),
                sampler.top_k,
                sampler.top_p
            ));
        }
        return Ok(None);
    };
    // Tokens clearly more likely than the claim come before it; near-ties may come either way.
    let before: Vec<f64> =
        kept.iter().map(|(_, l)| *l).filter(|l| *l > lp + GREEDY_TOLERANCE).collect();
    if sampler.top_k != 0 && before.len() >= sampler.top_k as usize {
        return Err(format!(
            "{} is not among the {} most likely tokens (top_k) here",
            describe(claim),
            sampler.top_k
        ));
    }
    let mass_before: f64 = before.iter().map(|l| l.exp()).sum::<f64>() / norm;
    if sampler.top_p < 1.0 && mass_before >= sampler.top_p {
        return Err(format!(
            "{} lies outside the top_p {} nucleus here: the tokens more likely than it already \
             hold {:.3} of the probability",
            describe(claim),
            sampler.top_p,
            mass_before
        ));
    }
    if sampler.min_p > 0.0 && lp + GREEDY_TOLERANCE < best_lp + sampler.min_p.ln() {
        return Err(format!(
            "{} is less than min_p {} times as likely as the best token here",
            describe(claim),
            sampler.min_p
        ));
    }
    if claim == Claim::End {
        return Ok(None);
    }
    Ok(Some(term(sampler, kept, norm, lp)))
}

/// The claim's term under the distribution the sampler draws from: the nucleus of the kept
/// tokens, sharpened or flattened by the temperature.
fn term(sampler: &Sampler, kept: &[(u32, f64)], norm: f64, claimed_lp: f64) -> Term {
    let mut nucleus = Vec::with_capacity(kept.len());
    let mut cumulative = 0.0;
    for (_, lp) in kept {
        let p = lp.exp() / norm;
        let above_min_p = sampler.min_p <= 0.0 || *lp >= kept[0].1 + sampler.min_p.ln();
        if !above_min_p && !nucleus.is_empty() {
            break;
        }
        nucleus.push(*lp);
        cumulative += p;
        if cumulative >= sampler.top_p {
            break;
        }
    }
    if !nucleus.iter().any(|lp| *lp <= claimed_lp + 1e-12) {
        // A near-tie just past the nucleus' edge: count it in.
        nucleus.push(claimed_lp);
    }
    let scaled: Vec<f64> = nucleus.iter().map(|lp| lp / sampler.temperature).collect();
    let max = scaled.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let log_z = max + scaled.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
    let log_q: Vec<f64> = scaled.iter().map(|s| s - log_z).collect();
    let mean: f64 = log_q.iter().map(|l| l.exp() * l).sum();
    let second: f64 = log_q.iter().map(|l| l.exp() * l * l).sum();
    Term {
        log_q: claimed_lp / sampler.temperature - log_z,
        mean,
        variance: (second - mean * mean).max(0.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn at(position: usize, top: &[(u32, f64)]) -> Scored {
        Scored { position, top: top.to_vec(), end_ids: vec![1] }
    }

    fn greedy_sampler() -> Sampler {
        Sampler { temperature: 0.0, ..DEFAULT }
    }

    #[test]
    fn options_give_the_sampler_or_say_why_not() {
        let options = |v: Value| serde_json::from_value::<BTreeMap<String, Value>>(v).expect("map");
        assert_eq!(Sampler::of(&options(json!({}))), Ok(DEFAULT));
        let s = Sampler::of(&options(json!({"temperature": 0, "top_k": 5}))).expect("sampler");
        assert!(s.is_greedy());
        assert_eq!(s.top_k, 5);
        assert!(Sampler::of(&options(json!({"repeat_penalty": 1.0}))).is_ok());
        let refused = Sampler::of(&options(json!({"repeat_penalty": 1.3}))).expect_err("penalty");
        assert!(refused.contains("repeat_penalty"), "{refused}");
        assert!(Sampler::of(&options(json!({"mirostat": 2}))).is_err());
    }

    #[test]
    fn greedy_answers_must_take_the_argmax_up_to_a_near_tie() {
        let answer = [7, 8];
        let scored = [at(0, &[(7, -0.1), (9, -2.0)]), at(1, &[(9, -0.50), (8, -0.55)])];
        assert!(matches!(
            judge(&greedy_sampler(), &answer, &scored),
            Judgement::Consistent { positions: 2, z: None, .. }
        ));
        let lie = [at(0, &[(9, -0.1), (7, -3.0)])];
        let Judgement::Inconsistent { position, reason } = judge(&greedy_sampler(), &answer, &lie)
        else {
            panic!("a non-argmax token passed")
        };
        assert_eq!(position, Some(0));
        assert!(reason.contains("token 9"), "{reason}");
        let unlisted = [at(0, &[(9, -0.1), (10, -3.0)])];
        assert!(matches!(
            judge(&greedy_sampler(), &answer, &unlisted),
            Judgement::Inconsistent { .. }
        ));
    }

    #[test]
    fn an_end_must_be_where_the_model_ends() {
        let answer = [7];
        let ends = [at(1, &[(1, -0.01), (7, -5.0)])];
        assert!(matches!(judge(&greedy_sampler(), &answer, &ends), Judgement::Consistent { .. }));
        let goes_on = [at(1, &[(7, -0.01), (1, -6.0)])];
        assert!(matches!(
            judge(&greedy_sampler(), &answer, &goes_on),
            Judgement::Inconsistent { position: Some(1), .. }
        ));
        // Sampled: an end token far outside the nucleus is not an end the sampler allows.
        assert!(matches!(judge(&DEFAULT, &answer, &goes_on), Judgement::Inconsistent { .. }));
        let could_end = [at(1, &[(7, -0.7), (1, -0.7)])];
        assert!(matches!(judge(&DEFAULT, &answer, &could_end), Judgement::Consistent { .. }));
    }

    #[test]
    fn sampled_answers_must_stay_inside_top_k_top_p_and_min_p() {
        let top = [(1, -0.2), (2, -2.0), (3, -3.0), (4, -6.0)];
        let sampler = Sampler { temperature: 1.0, top_k: 3, top_p: 0.95, min_p: 0.0 };
        assert!(matches!(judge(&sampler, &[2], &[at(0, &top)]), Judgement::Consistent { .. }));
        // Rank 4 with top_k 3.
        assert!(matches!(judge(&sampler, &[4], &[at(0, &top)]), Judgement::Inconsistent { .. }));
        // Token 1 alone holds e^-0.2 = 0.82 of the mass: with top_p 0.5, token 2 is outside.
        let narrow = Sampler { top_p: 0.5, ..sampler };
        assert!(matches!(judge(&narrow, &[2], &[at(0, &top)]), Judgement::Inconsistent { .. }));
        let strict_min = Sampler { min_p: 0.5, top_p: 1.0, ..sampler };
        assert!(matches!(judge(&strict_min, &[2], &[at(0, &top)]), Judgement::Inconsistent { .. }));
        // Not listed, but the listed tokens do not fill the nucleus and top_k is unlimited.
        let open = Sampler { top_k: 0, top_p: 1.0, ..sampler };
        assert!(matches!(judge(&open, &[99], &[at(0, &top)]), Judgement::Consistent { .. }));
    }

    #[test]
    fn many_unlikely_but_allowed_tokens_give_a_sampler_or_model_swap_away() {
        // At each position the model is fairly sure of token 1; the claim is always token 2,
        // allowed each time, but together far too unlikely.
        let top = [(1, -0.05), (2, -3.2)];
        let sampler = Sampler { temperature: 0.8, top_k: 40, top_p: 1.0, min_p: 0.0 };
        let answer = vec![2; 32];
        let scored: Vec<Scored> = (0..32).map(|i| at(i, &top)).collect();
        let Judgement::Inconsistent { position: None, reason } = judge(&sampler, &answer, &scored)
        else {
            panic!("a swap went unseen")
        };
        assert!(reason.contains("z ="), "{reason}");
        // The likely tokens, with a few unlikely ones as honest sampling gives, pass.
        let honest: Vec<u32> = (0..32).map(|i| if i % 16 == 3 { 2 } else { 1 }).collect();
        assert!(matches!(judge(&sampler, &honest, &scored), Judgement::Consistent { .. }));
    }
}
