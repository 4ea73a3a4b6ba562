"""data/scrub.py: each kind of identifier is replaced by its placeholder in several formats, medical text without PHI
is left alone, overlapping detections give one placeholder, and nothing reaches the network or the logs."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys

import pytest

from domain_expert.config import PHI_ENTITIES
from domain_expert.data.scrub import PLACEHOLDER, Scrubber


@pytest.fixture(scope="module")
def scrubber():
    """One engine for the module (building it takes seconds), built with the network blocked: tldextract inside
    Presidio fetches the public suffix list unless told not to."""
    real = socket.socket.connect
    calls = []

    def refuse(self, address):  # noqa: ANN001, ANN202
        calls.append(address)
        raise OSError("network blocked in test_scrub")

    socket.socket.connect = refuse
    try:
        s = Scrubber()
        s.scrub("warm up: jane@example.com, MRN 12345678, www.example.com")
    finally:
        socket.socket.connect = real
    assert calls == []
    return s


PLANTED = [
    ("email", "Contact: {}.", "jane.doe42@example.com"),
    ("email", "Results were e-mailed to {} yesterday.", "pt_4471@hospital.example.org"),
    ("phone", "Call {} with results.", "(555) 123-4567"),
    ("phone", "Call {} with results.", "555-123-4567"),
    ("phone", "Call {} with results.", "555.123.4567"),
    ("phone", "Reachable on {} (UK).", "+44 20 7946 0958"),
    ("phone", "Fax: {}", "617 555 0199"),
    ("phone", "Tel. {} (home).", "+49 30 1234567"),
    ("mrn", "MRN: {}.", "00123456"),
    ("mrn", "Medical record number {} reviewed.", "A1234567"),
    ("mrn", "Chart #{} updated.", "99887766"),
    ("mrn", "Patient ID {} admitted to ward 4.", "778812"),
    ("mrn", "Seen today, {} on the wristband.", "MRN-778812"),
    ("mrn", "Hospital number: {}", "H-123456"),
    ("account", "Account no. {} billed.", "12345678"),
    ("account", "Acct #: {}", "AC-556677"),
    ("account", "Insurance ID {} on file.", "XYZ123456789"),
    ("account", "Member ID: {}.", "88776655"),
    ("account", "Policy number {} verified.", "P-556677"),
    ("ssn", "SSN: {}.", "078-05-1120"),
    ("ssn", "Social security number {} on file.", "123-45-6789"),
    ("ssn", "ID card shows {}.", "123 45 6789"),
    ("ssn", "SSN {} noted.", "536-22-8726"),
    ("dob", "DOB: {}.", "03/14/1962"),
    ("dob", "Date of birth {}.", "1962-03-14"),
    ("dob", "She was born on {} in Ohio.", "March 14, 1962"),
    ("dob", "D.O.B. {}", "14 Mar 1962"),
    ("dob", "Jane, b. {}, presented with fatigue.", "3/4/62"),
    ("address", "Lives at {}.", "1234 Elm Street"),
    ("address", "Address: {}.", "55 W. Maple Ave, Apt 4B, Springfield, IL 62704"),
    ("address", "Mail to {} please.", "P.O. Box 123"),
    ("address", "Moved to {} last year.", "900 Martin Luther King Blvd"),
    ("url", "See {} for images.", "https://portal.example.org/patient?id=12345"),
    ("url", "Portal: {}", "www.example-clinic.com/u/778"),
    ("url", "Uploaded to {} today.", "http://example.com/records/4471"),
    ("ip", "Login from {} flagged.", "192.168.1.20"),
    ("ip", "Device IP {}.", "2001:db8::1f"),
    ("name", "Seen by Dr. {} today.", "Alice Smith"),
    ("name", "Mrs. {} agreed.", "Kowalczyk"),
    ("name", "Patient {} was informed.", "Oluwaseun Adebayo"),
    ("name", "{} was admitted with fever.", "Mary Johnson"),
    ("name", "Results for {} were reviewed.", "Robert J. Miller"),
    ("name", "Name: {}", "Xiaoling Wu"),
]


@pytest.mark.parametrize(("kind", "template", "ident"), PLANTED, ids=[f"{k}:{i}" for k, _, i in PLANTED])
def test_identifier_replaced(scrubber, kind, template, ident):
    out, counts = scrubber.scrub(template.format(ident))
    assert out == template.format(PLACEHOLDER[kind])
    assert counts == {kind: 1}


NOT_PHI = [
    "Hodgkin lymphoma, Down syndrome, Wilson disease and Evans syndrome were excluded.",
    "May-Hegglin anomaly, Diamond-Blackfan anemia, Bernard-Soulier syndrome and Pelger-Huet anomaly are inherited.",
    "Chediak-Higashi and Wiskott-Aldrich syndromes; Glanzmann thrombasthenia; Fanconi anemia.",
    "The Philadelphia chromosome; Auer rods; Howell-Jolly bodies, Heinz bodies and Reed-Sternberg cells.",
    "Low von Willebrand factor, Bence Jones protein in urine, and Burkitt lymphoma.",
    "A decrease in the level of pyruvate kinase (EC 2.7.1.40) in erythrocytes below the lower limit of normal.",
    "An abnormally increased number of neutrophils in the blood, as described in 1962 and again in 2019.",
    "FLT3-ITD and NPM1 mutations; karyotype 46,XY,t(9;22)(q34;q11.2); cytarabine 10 mg/m2 on days 1-7.",
    "Hazard ratio 0.870 (95% CI 0.784-0.965); doses of 6.000-200.000 mg; see PMID:16859547.",
    "Response rates were high in MDS.The overall survival improved in leukemia.This article reviews it.",
    "Admitted on 03/14/2020 for febrile neutropenia; follow-up visit on April 2, 2021.",
    "Acute Myeloid Leukemia: Patient Outcomes After Induction in the United States.",
    "CD34+ cells were transplanted into Nod.Scid.Gamma (NSG) mice.",
]


@pytest.mark.parametrize("text", NOT_PHI)
def test_medical_text_untouched(scrubber, text):
    assert scrubber.scrub(text) == (text, {})


def test_counts_and_several_kinds(scrubber):
    text = "Dr. Smith called 555-123-4567 and 555-987-6543 about MRN 00123456; e-mail a@example.com."
    out, counts = scrubber.scrub(text)
    assert out == "Dr. [NAME] called [PHONE] and [PHONE] about MRN [MRN]; e-mail [EMAIL]."
    assert counts == {"name": 1, "phone": 2, "mrn": 1, "email": 1}


def test_overlap_gives_one_placeholder(scrubber):
    # an SSN is phone-shaped and a number after "SSN" is both; an e-mail's domain is URL-shaped
    assert scrubber.scrub("SSN: 078-05-1120") == ("SSN: [SSN]", {"ssn": 1})
    assert scrubber.scrub("Write to jane@example.com now.") == ("Write to [EMAIL] now.", {"email": 1})
    assert scrubber.scrub("Fax: (555) 123-4567") == ("Fax: [PHONE]", {"phone": 1})


def test_only_chosen_entities(scrubber):
    only_email = Scrubber(["email"])
    assert only_email.scrub("jane@example.com, 555-123-4567") == ("[EMAIL], 555-123-4567", {"email": 1})
    with pytest.raises(ValueError, match="unknown PHI entity"):
        Scrubber(["email", "fingerprint"])


def test_prefilter_is_exact(scrubber):
    texts = [t.format(i) for _, t, i in PLANTED] + NOT_PHI
    off = Scrubber(prefilter=False)
    for t in texts:
        assert scrubber.scrub(t) == off.scrub(t)


def test_placeholder_share(scrubber):
    assert scrubber.placeholder_share("") == 0.0
    assert scrubber.placeholder_share("[NAME] [PHONE]") == 1.0
    assert scrubber.placeholder_share("Call [PHONE], today please") == 0.25
    out, _ = scrubber.scrub("Dr. Smith, 555-123-4567, jane@example.com")
    assert scrubber.placeholder_share(out) >= 0.5


def test_nothing_logged(scrubber, caplog):
    with caplog.at_level(logging.DEBUG):
        scrubber.scrub("Patient Jane Miller, DOB 03/14/1962, MRN 00123456, jane@example.com")
    assert not [r for r in caplog.records if r.name.startswith(("presidio", "tldextract"))]
    for r in caplog.records:
        assert "Miller" not in r.getMessage() and "00123456" not in r.getMessage()


def test_import_is_light():
    code = "import sys, domain_expert.data.scrub; print(any(m.startswith(('presidio', 'spacy')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_entities_match_config():
    assert set(PHI_ENTITIES) == set(PLACEHOLDER)
