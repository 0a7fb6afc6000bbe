//! The campaign runner reaches its model only through ports: a campaign on a model family
//! without an automatic rater runs to its end, and its evaluation's quality is what the people
//! in round 2 said, computed here from the round's own verdicts.

mod common;

use std::sync::Arc;

use app::commands::CommandBus;
use common::{Scale, scripted_campaign};
use domain::campaign::Work;
use domain::round::{ItemContent, Verdict};
use domain::{AnnotationRound, Campaign};
use store::{EventStore, SqliteStore};

#[test]
fn without_a_rater_quality_is_round_twos_human_ratings() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(dir.path().join("events.db")).unwrap());
    let bus = CommandBus::new(store);
    let report = scripted_campaign(&bus, Scale::QUICK, 11);
    assert_eq!(report.stages.last().map(String::as_str), Some("completed"), "{:?}", report.stages);
    assert!(report.images > 0 && report.annotations > 0);

    let (campaign, _) = bus.load::<Campaign>(&report.campaign_id.stream()).unwrap();
    let round_id = campaign
        .work
        .iter()
        .find_map(|w| if let Work::Round2 { round_id } = w { Some(*round_id) } else { None })
        .expect("the campaign ran round 2");
    let (round, _) = bus.load::<AnnotationRound>(&round_id.stream()).unwrap();
    assert_eq!(campaign.evaluations.len(), 3 * 2, "three associations, two arms");
    for evaluation in &campaign.evaluations {
        // The mean over the base model's single images of this association of their mean
        // human quality.
        let base = campaign.base_model.unwrap();
        let qualities: Vec<f64> = round
            .outcomes
            .iter()
            .filter_map(|outcome| {
                let item = round.item(outcome.item_id)?;
                let ours = item.label.association_id == Some(evaluation.association_id)
                    && item.label.models == [base]
                    && matches!(item.content, ItemContent::Image(_));
                match (&outcome.verdict, ours) {
                    (Verdict::Check { mean_quality, .. }, true) => Some(*mean_quality),
                    _ => None,
                }
            })
            .collect();
        assert!(!qualities.is_empty());
        let expected = qualities.iter().sum::<f64>() / qualities.len() as f64;
        assert!(
            (evaluation.quality_before - expected).abs() < 1e-12,
            "quality before {} is not the people's {expected}",
            evaluation.quality_before
        );
        assert!((1.0..=5.0).contains(&evaluation.quality_after), "{}", evaluation.quality_after);
        // Round 2 had no controls: its verdicts were majorities, and the evaluation says so.
        assert_eq!(evaluation.aggregation, Some(domain::round::Aggregation::Majority));
        // People's median of the same per-image means; the interval's ends are values of the
        // sample, around the median.
        let people = evaluation.people_quality_before.expect("people's quality before");
        let mut sorted = qualities.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        assert_eq!((people.n as usize, people.median), (n, median));
        assert!(sorted.contains(&people.ci_low) && sorted.contains(&people.ci_high), "{people:?}");
        assert!(people.ci_low <= median && median <= people.ci_high, "{people:?}");
        assert!(evaluation.people_quality_after.is_some());
    }
}
