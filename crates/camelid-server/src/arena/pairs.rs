//! Which two models fight: FastChat's `get_battle_pair` without its targets and boosts. The
//! first model is drawn by weight, its rival by weight among the other models, and the two
//! sides are shuffled. With equal weights every pair of distinct models is equally likely.

use rand::distr::weighted::WeightedIndex;
use rand::distr::Distribution;
use rand::Rng;
use std::collections::BTreeMap;

/// A model's weight: as given by `--arena-weight NAME=W`, 1 otherwise.
fn weight(weights: &BTreeMap<String, f64>, model: &str) -> f64 {
    weights.get(model).copied().unwrap_or(1.0)
}

/// Two distinct models of `models` as (A, B); `None` when fewer than two weigh more than 0.
pub fn draw_pair<R: Rng + ?Sized>(
    models: &[String],
    weights: &BTreeMap<String, f64>,
    rng: &mut R,
) -> Option<(String, String)> {
    let w: Vec<f64> = models.iter().map(|m| weight(weights, m)).collect();
    if w.iter().filter(|&&x| x > 0.0).count() < 2 {
        return None;
    }
    let first = WeightedIndex::new(&w).ok()?.sample(rng);
    let rivals: Vec<usize> = (0..models.len()).filter(|&i| i != first).collect();
    let rival_w: Vec<f64> = rivals.iter().map(|&i| w[i]).collect();
    let rival = rivals[WeightedIndex::new(&rival_w).ok()?.sample(rng)];
    let (a, b) = if rng.random::<bool>() {
        (first, rival)
    } else {
        (rival, first)
    };
    Some((models[a].clone(), models[b].clone()))
}

/// Reads `NAME=W` (W finite and ≥ 0).
pub fn parse_weight(arg: &str) -> Result<(String, f64), String> {
    let (name, w) = arg
        .split_once('=')
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| format!("--arena-weight {arg:?}: expected NAME=WEIGHT"))?;
    match w.parse::<f64>() {
        Ok(w) if w.is_finite() && w >= 0.0 => Ok((name.to_string(), w)),
        _ => Err(format!(
            "--arena-weight {arg:?}: the weight must be a number ≥ 0"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use std::collections::HashMap;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// Frequencies of unordered pairs and of each model on side A, over `n` draws.
    fn tally(
        models: &[String],
        weights: &BTreeMap<String, f64>,
        n: usize,
    ) -> (HashMap<(String, String), f64>, HashMap<String, f64>) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut pairs = HashMap::new();
        let mut side_a = HashMap::new();
        for _ in 0..n {
            let (a, b) = draw_pair(models, weights, &mut rng).unwrap();
            assert_ne!(a, b, "a model against itself");
            let key = if a < b {
                (a.clone(), b)
            } else {
                (b, a.clone())
            };
            *pairs.entry(key).or_insert(0.0) += 1.0 / n as f64;
            *side_a.entry(a).or_insert(0.0) += 1.0 / n as f64;
        }
        (pairs, side_a)
    }

    #[test]
    fn equal_weights_draw_every_pair_alike_and_either_side_alike() {
        let models = names(&["w", "x", "y", "z"]);
        let (pairs, side_a) = tally(&models, &BTreeMap::new(), 60_000);
        assert_eq!(pairs.len(), 6, "{pairs:?}");
        for (pair, p) in &pairs {
            // 1/6 each; 60k draws give a standard error of 0.0015.
            assert!((p - 1.0 / 6.0).abs() < 0.008, "{pair:?}: {p}");
        }
        for (m, p) in &side_a {
            assert!((p - 0.25).abs() < 0.01, "{m} on side A: {p}");
        }
    }

    #[test]
    fn weights_draw_as_fastchat_and_zero_leaves_a_model_out() {
        let models = names(&["a", "b", "c", "off"]);
        let weights: BTreeMap<String, f64> = [("a", 2.0), ("off", 0.0)]
            .into_iter()
            .map(|(m, w)| (m.to_string(), w))
            .collect();
        let (pairs, _) = tally(&models, &weights, 60_000);
        // First model by weight (a: 1/2, b and c: 1/4), then its rival by weight among the
        // rest: P(a,b) = 1/2·1/2 + 1/4·2/3 = 5/12, P(a,c) likewise, P(b,c) = 2·1/4·1/3 = 1/6.
        let p = |x: &str, y: &str| pairs.get(&(x.into(), y.into())).copied().unwrap_or(0.0);
        assert!((p("a", "b") - 5.0 / 12.0).abs() < 0.01, "{pairs:?}");
        assert!((p("a", "c") - 5.0 / 12.0).abs() < 0.01, "{pairs:?}");
        assert!((p("b", "c") - 1.0 / 6.0).abs() < 0.01, "{pairs:?}");
        assert!(pairs.keys().all(|(x, y)| x != "off" && y != "off"));
    }

    #[test]
    fn fewer_than_two_drawable_models_make_no_pair() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let none = BTreeMap::new();
        assert_eq!(draw_pair(&names(&["solo"]), &none, &mut rng), None);
        let off: BTreeMap<String, f64> = [("b".to_string(), 0.0)].into();
        assert_eq!(draw_pair(&names(&["a", "b"]), &off, &mut rng), None);
        assert_eq!(parse_weight("a=2.5"), Ok(("a".into(), 2.5)));
        assert!(parse_weight("a=-1").is_err() && parse_weight("=1").is_err());
        assert!(parse_weight("a").is_err() && parse_weight("a=nan").is_err());
    }
}
