"""How well data/scrub.py finds identifiers, and how often it touches text that has none.

1. Recall and precision on planted identifiers: seeded synthetic clinical notes with >= 30 identifiers of each kind in
   varied formats and sentences, plus decoys that are not PHI (visit dates, doses, karyotypes, eponyms). Person names
   are drawn from the US Census lists the scrubber uses AND from a list of names not in them (non-US names), with and
   without a title, so the name recall is not flattered by the scrubber's own lists.
2. False positives on the project's default data: every text of the HPO hematology branch (names, definitions,
   synonyms, comments) and the leukemia-genomics recipe's PubMed abstracts, which contain no PHI: every replacement
   there is a false positive (listed in the JSON, per kind, with its context).
3. Speed: records/s with and without the pre-filter that skips Presidio for text no recognizer can match.

    PYTHONPATH=src .venv/bin/python bench/phi_recall.py [--seed 0] [--per-kind 40] [--out FILE]

Writes a stamped JSON (default bench/results/phi_recall.json).
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

# Names that are not in the census lists (checked at run time: any that is, is reported and skipped).
OTHER_FIRST = [
    "Oluwaseun", "Chidinma", "Xiaoling", "Wei", "Priya", "Raghav", "Siddharth", "Aigerim", "Nurlan", "Kwabena",
    "Thandiwe", "Mehmet", "Yusuf", "Svetlana", "Dmitri", "Ngozi", "Haruto", "Yui", "Bongani", "Ayaan", "Zeynep",
    "Fatemeh", "Tariq", "Anahit", "Kofi", "Ebru", "Jaroslav", "Ljubica", "Tomasz", "Eirik",
]  # fmt: skip
OTHER_LAST = [
    "Adebayo", "Okonkwo", "Zhang", "Raghunathan", "Venkataraman", "Nurlanovna", "Mensah", "Dlamini", "Yilmaz",
    "Kuznetsova", "Nakamura", "Takahashi", "Mahlangu", "Chaudhry", "Ozturk", "Hosseini", "Asante", "Kowalczyk",
    "Wojciechowski", "Haugland", "Abdullahi", "Nwosu", "Petrosyan", "Grigoryan", "Bhattacharya", "Srinivasan",
    "Oyelaran", "Tanaka", "Sorensen", "Vukovic",
]  # fmt: skip

FILLER = [
    "Hemoglobin was 9.2 g/dL and platelets 45 x 10^9/L.",
    "Bone marrow showed 35% blasts with Auer rods.",
    "Karyotype 46,XY,t(9;22)(q34;q11.2) was found, FLT3-ITD negative.",
    "She received cytarabine 100 mg/m2 on days 1-7 in 2019.",
    "Differential included Hodgkin lymphoma and Evans syndrome.",
    "Smear showed Howell-Jolly bodies and Pelger-Huet anomaly.",
    "Admitted on 03/14/2020 for febrile neutropenia.",
    "Follow-up visit scheduled for April 2, 2021.",
    "History of von Willebrand factor deficiency and Down syndrome.",
    "Bence Jones protein was absent; Burkitt lymphoma was excluded.",
]


def _phone(rng: random.Random) -> str:
    a, b, c = rng.randint(201, 989), rng.randint(200, 999), rng.randint(0, 9999)
    return rng.choice(
        [f"({a}) {b}-{c:04d}", f"{a}-{b}-{c:04d}", f"{a}.{b}.{c:04d}", f"+1 {a} {b} {c:04d}", f"(555) {b}-{c:04d}",
         f"+44 20 {rng.randint(7000, 7999)} {c:04d}", f"+49 30 {rng.randint(100000, 999999)}",
         f"+33 1 {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)} {rng.randint(10, 99)}"]
    )  # fmt: skip


def _date(rng: random.Random) -> str:
    y, m, d = rng.randint(1930, 2005), rng.randint(1, 12), rng.randint(1, 28)
    months = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December"]  # fmt: skip
    return rng.choice(
        [f"{m:02d}/{d:02d}/{y}", f"{m}/{d}/{y}", f"{y}-{m:02d}-{d:02d}", f"{months[m - 1]} {d}, {y}",
         f"{d} {months[m - 1][:3]} {y}", f"{d:02d}.{m:02d}.{y}"]
    )  # fmt: skip


def _planted(kind: str, rng: random.Random, names: dict) -> tuple[str, str, str]:
    """(sentence with a {} slot, identifier, subgroup) for one planted identifier of `kind`."""
    if kind == "email":
        user = rng.choice(["j.doe", "mary_k", "pt4471", "a.nakamura", "bob+labs"])
        dom = rng.choice(["example.com", "mail.example.org", "hospital.example.net", "uni-klinik.de"])
        return rng.choice(["Contact: {}.", "Results were e-mailed to {} yesterday.", "Email {} for records."]), \
            f"{user}{rng.randint(1, 999)}@{dom}", "email"  # fmt: skip
    if kind == "phone":
        return rng.choice(["Call {} with results.", "Phone: {}.", "Fax: {}", "Daughter reachable at {} after 5pm.",
                           "Tel. {} (home)."]), _phone(rng), "phone"  # fmt: skip
    if kind == "mrn":
        ident = rng.choice([f"{rng.randint(0, 99999999):08d}", f"MRN-{rng.randint(100000, 999999)}",
                            f"A{rng.randint(1000000, 9999999)}", f"{rng.randint(1000000, 9999999)}"])  # fmt: skip
        return rng.choice(["MRN: {}.", "Medical record number {} reviewed.", "Chart #{} updated.",
                           "Patient ID {} admitted to ward 4.", "Hospital number: {}", "medical record no. {}"]), \
            ident, "mrn"  # fmt: skip
    if kind == "account":
        ident = rng.choice([f"{rng.randint(10000000, 99999999)}", f"AC-{rng.randint(100000, 999999)}",
                            f"XYZ{rng.randint(100000000, 999999999)}"])  # fmt: skip
        return rng.choice(["Account no. {} billed.", "Acct #: {}", "Insurance ID {} on file.", "Member ID: {}.",
                           "Policy number {} verified.", "Billing ID {}"]), ident, "account"  # fmt: skip
    if kind == "ssn":
        a, b, c = rng.randint(1, 899), rng.randint(1, 99), rng.randint(1, 9999)
        ident = rng.choice([f"{a:03d}-{b:02d}-{c:04d}", f"{a:03d} {b:02d} {c:04d}", "078-05-1120", "123-45-6789"])
        return rng.choice(["SSN: {}.", "Social security number {} on file.", "SSN {}", "ID card shows {}."]), \
            ident, "ssn"  # fmt: skip
    if kind == "dob":
        return rng.choice(["DOB: {}.", "Date of birth {}.", "born on {} in Ohio.", "D.O.B. {}", "b. {}",
                           "Birth date: {}."]), _date(rng), "dob"  # fmt: skip
    if kind == "address":
        street = rng.choice(["Elm", "Maple", "Oak Hill", "Martin Luther King", "Main", "Cedar Ridge", "5th"])
        suf = rng.choice(["Street", "St.", "Avenue", "Ave", "Road", "Rd", "Blvd", "Lane", "Drive", "Ct", "Way",
                          "Place"])  # fmt: skip
        base = f"{rng.randint(1, 9999)} {rng.choice(['', 'N. ', 'West '])}{street} {suf}"
        ident = rng.choice([base, f"{base}, Apt {rng.randint(1, 40)}{rng.choice('ABC')}",
                            f"{base}, Springfield, IL {rng.randint(10000, 99999)}",
                            f"P.O. Box {rng.randint(1, 9999)}"])  # fmt: skip
        return rng.choice(["Lives at {}.", "Address: {}.", "Mail to {} please.", "Moved to {} last year."]), \
            ident, "address"  # fmt: skip
    if kind == "url":
        ident = rng.choice(
            [
                f"https://portal.example.org/patient?id={rng.randint(1000, 99999)}",
                f"http://www.example.com/records/{rng.randint(1000, 99999)}",
                f"www.example-clinic.com/u/{rng.randint(100, 999)}",
                "https://example.org/results",
            ]
        )
        return rng.choice(["See {} for images.", "Portal: {}", "Uploaded to {} today."]), ident, "url"
    if kind == "ip":
        ident = rng.choice([".".join(str(rng.randint(1, 254)) for _ in range(4)),
                            f"2001:db8::{rng.randint(1, 9999):x}"])  # fmt: skip
        return rng.choice(["Login from {} flagged.", "Device IP {}.", "Accessed via {}"]), ident, "ip"
    # names: census or not, with or without a title
    census = rng.random() < 0.5
    pool = names["census"] if census else names["other"]
    first, last = rng.choice(pool[0]), rng.choice(pool[1])
    titled = rng.random() < 0.5
    group = f"name_{'titled' if titled else 'bare'}_{'census' if census else 'other'}"
    if titled:
        title = rng.choice(["Dr.", "Mr.", "Mrs.", "Ms.", "Patient", "Nurse", "seen by", "Signed by Dr.", "Daughter",
                            "Discussed with"])  # fmt: skip
        ident = rng.choice([f"{first} {last}", last, f"{first[0]}. {last}"])
        return f"{title} {{}} " + rng.choice(["reviewed the smear.", "was informed.", "agreed."]), ident, group
    ident = rng.choice([f"{first} {last}", f"{first} {rng.choice('ABCDEFGHJKLMNPRSTW')}. {last}"])
    # no title or role word before the name: only the census lists can find it
    bare = ["{} was admitted with fever.", "Results for {} were reviewed.", "Then {} agreed to the plan."]
    return rng.choice(bare), ident, group


def planted_notes(kinds: list[str], per_kind: int, seed: int, names: dict) -> list[tuple[str, list[tuple]]]:
    """Notes of 2-4 identifiers among filler sentences; each planted item is (start, end, kind, subgroup)."""
    rng = random.Random(seed)
    items = [(k, i) for k in kinds for i in range(per_kind * (4 if k == "name" else 1))]  # names: 4 subgroups
    rng.shuffle(items)
    notes = []
    while items:
        n = rng.randint(2, 4)
        take, items = items[:n], items[n:]
        parts: list[str] = []
        planted = []
        pos = 0
        for kind, _ in take:
            if rng.random() < 0.6:
                f = rng.choice(FILLER) + " "
                parts.append(f)
                pos += len(f)
            template, ident, group = _planted(kind, rng, names)
            before, after = template.split("{}")
            parts += [before, ident, after + " "]
            planted.append((pos + len(before), pos + len(before) + len(ident), kind, group))
            pos += len(before) + len(ident) + len(after) + 1
        notes.append(("".join(parts).strip(), planted))
    return notes


def hpo_texts() -> list[str]:
    from domain_expert.config import HEMATOLOGY_BRANCH
    from domain_expert.data.hpo import descendants, hpo_obo_path, parse_obo

    terms = parse_obo(hpo_obo_path())
    out = []
    for tid in sorted(descendants(terms, HEMATOLOGY_BRANCH)):
        t = terms[tid]
        if t.obsolete:
            continue
        out += [x for x in (t.name, t.definition, t.comment, *t.synonyms, *t.layperson) if x]
    return out


def pubmed_texts() -> list[str]:
    from domain_expert.config import load_config
    from domain_expert.data.pubmed import resolve_files, scan

    cfg = load_config("leukemia-genomics")
    src = next(s for s in cfg.data.sources if s.kind == "pubmed")
    picked, _ = scan(resolve_files(src.files, "data.sources.0"), src)
    return [c.text for c in picked]


def false_positives(scrubber, texts: list[str]) -> dict:
    per_kind: dict[str, int] = {}
    examples: list[dict] = []
    for i, text in enumerate(texts):
        for s, e, kind in scrubber.spans(text):
            per_kind[kind] = per_kind.get(kind, 0) + 1
            examples.append({"text": i, "kind": kind, "span": text[s:e], "context": text[max(0, s - 40) : e + 40]})
    return {"texts": len(texts), "chars": sum(map(len, texts)), "replacements": per_kind, "examples": examples}


def speed(make, texts: list[str], repeats: int) -> dict:
    out = {}
    for label, prefilter in (("prefilter", True), ("no_prefilter", False)):
        s = make(prefilter)
        s.scrub("warm up: MRN 12345678")
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            for t in texts:
                s.scrub(t)
            best = min(best, time.perf_counter() - t0)
        out[label] = {"records": len(texts), "seconds": round(best, 3), "records_per_s": round(len(texts) / best, 1)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--per-kind", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/phi_recall.json"))
    args = ap.parse_args()

    from domain_expert.config import PHI_ENTITIES
    from domain_expert.data.scrub import Scrubber, _census
    from domain_expert.fsutil import write_json_atomic
    from domain_expert.provenance import stamp

    first, last = _census()
    census_first = sorted(n for n in first if len(n) > 2)
    census_last = sorted(n for n in last if len(n) > 2)
    other = ([n for n in OTHER_FIRST if n not in first], [n for n in OTHER_LAST if n not in last])
    names = {"census": (census_first, census_last), "other": other}

    t0 = time.perf_counter()
    scrubber = Scrubber(PHI_ENTITIES)
    scrubber.scrub("build: MRN 12345678")
    build_s = time.perf_counter() - t0

    notes = planted_notes(list(PHI_ENTITIES), args.per_kind, args.seed, names)
    per_group: dict[str, dict[str, int]] = {}
    detected_total = detected_true = 0
    misses: list[dict] = []
    for text, planted in notes:
        spans = scrubber.spans(text)
        detected_total += len(spans)
        detected_true += sum(any(s < pe and e > ps for ps, pe, _, _ in planted) for s, e, _ in spans)
        for ps, pe, kind, group in planted:
            covered = all(any(s <= i < e for s, e, _ in spans) for i in range(ps, pe) if not text[i].isspace())
            right = covered and all(k == kind for s, e, k in spans if s < pe and e > ps)
            for key in {kind, group}:
                g = per_group.setdefault(key, {"planted": 0, "replaced": 0, "replaced_as_kind": 0})
                g["planted"] += 1
                g["replaced"] += covered
                g["replaced_as_kind"] += right
            if not covered:
                misses.append({"kind": group, "planted": text[ps:pe], "sentence": text[max(0, ps - 30) : pe + 30]})
    recall = {k: {**v, "recall": round(v["replaced"] / v["planted"], 3)} for k, v in sorted(per_group.items())}
    precision = round(detected_true / detected_total, 4) if detected_total else None
    for k, v in recall.items():
        print(f"{k:22s} recall {v['recall']:.3f} ({v['replaced']}/{v['planted']})")
    print(f"precision {precision} ({detected_true}/{detected_total} replaced spans overlap a planted identifier)")

    corpora = {"hpo_hematology": hpo_texts(), "pubmed_leukemia": pubmed_texts()}
    fps = {name: false_positives(scrubber, texts) for name, texts in corpora.items()}
    for name, fp in fps.items():
        print(f"{name}: {fp['texts']} texts, replacements {fp['replacements']}")

    timing = {name: speed(lambda p: Scrubber(PHI_ENTITIES, prefilter=p), texts, args.repeats)
              for name, texts in corpora.items()}  # fmt: skip
    timing["planted_notes"] = speed(lambda p: Scrubber(PHI_ENTITIES, prefilter=p), [t for t, _ in notes], args.repeats)
    for name, t in timing.items():
        print(f"speed {name}: {t}")

    result = {
        "stamp": stamp(),
        "seed": args.seed,
        "notes": len(notes),
        "names_not_in_census": {"first": len(other[0]), "last": len(other[1])},
        "build_seconds": round(build_s, 2),
        "recall": recall,
        "precision": {"value": precision, "replaced_spans": detected_total, "overlapping_planted": detected_true},
        "misses": misses,
        "false_positives": fps,
        "speed": timing,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
