//! A campaign whose rounds check their raters: gold items from the model family in the baseline
//! round and rounds 1 and 2, a careless annotator excluded by the rule in each, split items given more raters and
//! (auto-accept being the curator) left out when still split, and no gold picture ever trained on.

mod common;

use std::sync::Arc;

use app::commands::CommandBus;
use common::{Scale, scripted_campaign};
use domain::campaign::{CampaignRoundControls, Work};
use domain::round::{AdaptiveOverlap, Aggregation, ExclusionRule, ItemContent, Verdict};
use domain::*;
use store::{EventStore, SqliteStore};

#[test]
fn a_careless_annotator_is_excluded_from_every_round_and_gold_is_never_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(SqliteStore::open(dir.path().join("events.db")).unwrap());
    let bus = CommandBus::new(store);
    let controls = CampaignRoundControls {
        gold_items_per_association: 4,
        exclusion: Some(ExclusionRule { min_gold_answers: 3, min_accuracy: 0.8 }),
        overlap: Some(AdaptiveOverlap { max_raters: 4, margin: 2 }),
        aggregation: Aggregation::DawidSkene,
    };
    let scale = Scale { annotators: 6, round_controls: Some(controls), careless: Some(5), ..Scale::QUICK };
    let report = scripted_campaign(&bus, scale, 7);
    assert_eq!(report.stages.last().map(String::as_str), Some("completed"), "{:?}", report.stages);

    let (campaign, _) = bus.load::<Campaign>(&report.campaign_id.stream()).unwrap();
    let rounds: Vec<RoundId> = campaign
        .work
        .iter()
        .filter_map(|w| match w {
            Work::BaselineRound { round_id } | Work::Round1 { round_id } | Work::Round2 { round_id } => Some(*round_id),
            _ => None,
        })
        .collect();
    assert_eq!(rounds.len(), 3);
    let mut gold_blobs = Vec::new();
    for round_id in &rounds {
        let (round, _) = bus.load::<AnnotationRound>(&round_id.stream()).unwrap();
        // Three associations, four gold pictures each; the careless annotator out, the others in.
        assert_eq!(round.controls.gold.len(), 12);
        assert_eq!(round.excluded.keys().collect::<Vec<_>>(), ["annotator-6"], "round {round_id}");
        // Image verdicts by Dawid–Skene, pairs by majority, split items left out.
        for outcome in &round.outcomes {
            let not_yes_no = matches!(outcome.verdict, Verdict::Compare { .. } | Verdict::Undecided);
            assert!(not_yes_no || outcome.aggregation == Aggregation::DawidSkene, "{outcome:?}");
        }
        assert!(!round.raised.is_empty(), "random answers split some items: round {round_id}");
        for item in &round.items {
            if let (true, ItemContent::Image(image)) = (round.is_gold(item.item_id), &item.content) {
                gold_blobs.push(image.blob.clone());
            }
        }
    }
    // The evaluation says how round 2 reached its verdicts.
    assert!(!campaign.evaluations.is_empty());
    assert!(campaign.evaluations.iter().all(|e| e.aggregation == Some(Aggregation::DawidSkene)));
    // Neither arm trained on a gold picture.
    for work in &campaign.work {
        if let Work::FineTune { fine_tune_id, .. } = work {
            let (job, _) = bus.load::<FineTune>(&fine_tune_id.stream()).unwrap();
            assert!(!job.examples.is_empty());
            assert!(job.examples.iter().all(|e| !gold_blobs.contains(&e.blob)), "a gold picture was trained on");
        }
    }
}
