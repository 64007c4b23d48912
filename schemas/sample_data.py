"""Fictional but realistic French people, organisations and letters for the sample events.

Identifiers are plausible: the NIR carries its control key, RPPS and FINESS numbers end
with a correct Luhn digit, MSSanté addresses have the usual shape. The letters have the
size and layout of real ones (a referral letter is ~6 KB of UTF-8 with accents), so size
limits, encodings and attachment hashing are exercised as in production.
"""

from __future__ import annotations

from datetime import date, datetime
from zoneinfo import ZoneInfo

from schemas.codes import CAREBUS_BASE
from schemas.model import OrganizationInfo, PatientInfo, PractitionerInfo

PARIS = ZoneInfo("Europe/Paris")
T0 = datetime(2025, 3, 17, 9, 30, tzinfo=PARIS)  # a Monday morning

HOSPITAL = OrganizationInfo(finess="030780100", name="Centre hospitalier de Moulins-Yzeure")
CPTS = OrganizationInfo(finess="030004121", name="CPTS des Bords d'Allier")
CHU = OrganizationInfo(finess="630000677", name="CHU de Clermont-Ferrand")
PATIENT = PatientInfo(
    family="Lefèvre",
    given="Hélène",
    birth_date=date(1958, 3, 14),
    gender="female",
    ins="258030319004510",  # 2 58 03 03 190 045, key 10
    local_id=(f"{CAREBUS_BASE}/sid/ipp/{HOSPITAL.identifier_value}", "IPP00482913"),
    postcode="03000",
)
GP = PractitionerInfo(
    rpps="10003456125",
    family="Bénard",
    given="François",
    role="10",
    specialty="Médecine générale",
    mailbox="francois.benard@medecin.mssante.fr",
)
CARDIOLOGIST = PractitionerInfo(
    rpps="10012345673",
    family="Gérard-Moreau",
    given="Anaïs",
    role="10",
    specialty="Cardiologie et maladies vasculaires",
    mailbox="anais.gerard-moreau@cardio-vichy.mssante.fr",
)
HOSPITALIST = PractitionerInfo(
    rpps="10098765430",
    family="Lacroix-Dupré",
    given="Jérôme",
    role="10",
    specialty="Médecine interne",
    mailbox="jerome.lacroix-dupre@ch-moulins.mssante.fr",
    organization=HOSPITAL,
)
NURSE = PractitionerInfo(
    rpps="10024681354",
    family="Mercier",
    given="Zoé",
    role="60",
    mailbox="zoe.mercier@infirmier.mssante.fr",
)
DERMATOLOGIST = PractitionerInfo(
    rpps="10035715928",
    family="Le Bihan",
    given="Loïc",
    role="10",
    specialty="Dermatologie",
    mailbox="loic.lebihan@chu-clermontferrand.mssante.fr",
    organization=CHU,
)


def letter(author: PractitionerInfo, to: str, subject: str, sections: dict[str, str]) -> bytes:
    """Plain-text letter laid out like the ones practice software prints."""
    head = (
        f"Dr {author.given} {author.family.upper()}\n{author.specialty or ''}\n"
        f"RPPS {author.rpps} — MSSanté : {author.mailbox}\n\n"
        f"Moulins, le {T0:%d/%m/%Y}\nÀ l'attention de : {to}\n\nObjet : {subject}\n"
        f"Patiente : Mme {PATIENT.given} {PATIENT.family.upper()}, née le "
        f"{PATIENT.birth_date:%d/%m/%Y}, INS {PATIENT.ins}\n\n"
    )
    body = "".join(
        f"{title.upper()}\n{'-' * len(title)}\n{text.strip()}\n\n"
        for title, text in sections.items()
    )
    sign = f"Bien confraternellement,\n\nDr {author.given} {author.family}\n"
    return (head + body + sign).encode("utf-8")


_BIOLOGY = [
    ("Hémoglobine", "12,9 g/dL", "12,0 – 16,0"),
    ("Leucocytes", "7,2 G/L", "4,0 – 10,0"),
    ("Plaquettes", "241 G/L", "150 – 400"),
    ("Sodium", "139 mmol/L", "136 – 145"),
    ("Potassium", "4,6 mmol/L", "3,5 – 5,1"),
    ("Créatinine", "96 µmol/L", "45 – 90"),
    ("DFG (CKD-EPI)", "54 mL/min/1,73 m²", "> 60"),
    ("NT-proBNP", "1 240 pg/mL", "< 300"),
    ("TSH", "1,8 mUI/L", "0,4 – 4,0"),
    ("HbA1c", "7,4 %", "< 7,0"),
    ("LDL-cholestérol", "1,12 g/L", "< 1,00"),
    ("Ferritine", "38 µg/L", "15 – 150"),
    ("ASAT / ALAT", "24 / 31 UI/L", "< 35 / < 35"),
    ("CRP", "3 mg/L", "< 5"),
]

REFERRAL_LETTER = letter(
    GP,
    "Dr Anaïs Gérard-Moreau, cardiologue, 8 boulevard de Russie, 03200 Vichy",
    "demande d'avis cardiologique — dyspnée d'effort et palpitations",
    {
        "Motif": """
Chère consœur,
Je vous adresse Mme Lefèvre, 67 ans, que je suis depuis 2009, pour un avis cardiologique
devant une dyspnée d'effort d'aggravation progressive depuis trois mois (NYHA II à III)
associée à des palpitations irrégulières, parfois nocturnes, durant de quelques minutes à
une heure, sans syncope ni lipothymie.""",
        "Antécédents": """
- Hypertension artérielle depuis 2012, équilibrée sous IEC jusqu'à l'automne dernier.
- Diabète de type 2 depuis 2015, non insulino-requérant ; fond d'œil normal en 2024,
  microalbuminurie négative.
- Hypothyroïdie d'Hashimoto substituée depuis 2011.
- Cholécystectomie par cœlioscopie (2004) ; prothèse totale de hanche droite (2019),
  suites simples.
- Tabagisme sevré en 2001 (20 paquets-années). Pas d'alcool. Marche 30 minutes par jour
  jusqu'en novembre.
- Familiaux : père décédé d'un infarctus du myocarde à 62 ans ; sœur aînée en
  fibrillation atriale, anticoagulée.""",
        "Traitement habituel": """
- Metformine 1000 mg : 1 cp matin et soir
- Ramipril 5 mg : 1 cp le matin
- Atorvastatine 20 mg : 1 cp le soir
- Lévothyroxine 75 µg : 1 cp à jeun
- Paracétamol 1 g si douleurs, maximum 3 g/j
- Colécalciférol 100 000 UI : 1 ampoule tous les 3 mois
Allergie : pénicilline (urticaire généralisée en 1987). Pas d'intolérance connue aux
produits de contraste iodés.""",
        "Histoire récente": """
Depuis décembre, essoufflement à la montée d'un étage, alors qu'elle faisait encore ses
courses à pied en automne. Prise de poids de 3 kg en deux mois, œdèmes vespéraux des
chevilles. Orthopnée à deux oreillers depuis quinze jours, une toux sèche nocturne.
Pas de douleur thoracique typique ; une gêne épigastrique isolée à l'effort le 6 mars,
spontanément résolutive en cinq minutes. Pas de fièvre, pas d'épisode infectieux récent.
Elle vit seule à Moulins, au deuxième étage sans ascenseur, autonome ; sa fille passe deux
fois par semaine et une infirmière (Mme Zoé Mercier) vient chaque matin pour le pilulier
et la surveillance glycémique.""",
        "Examen clinique du 14 mars": """
Poids 78 kg (IMC 29,7). PA 152/88 mmHg aux deux bras. FC 104/min irrégulière. SpO2 95 %
en air ambiant, FR 20/min. Souffle systolique 2/6 au foyer mitral, sans irradiation.
Crépitants aux deux bases. Turgescence jugulaire discrète, reflux hépato-jugulaire
positif. Œdèmes prenant le godet jusqu'à mi-jambe, symétriques. Pas de signe de
thrombose veineuse. Pouls périphériques perçus. Examen neurologique normal.""",
        "ECG du 14 mars (versé au DMP)": """
Fibrillation atriale à réponse ventriculaire rapide, 100 à 110/min, axe normal, QRS fins,
pas de trouble de repolarisation systématisé, QTc 430 ms. Le tracé de mars 2023 était en
rythme sinusal à 72/min. CHA2DS2-VASc = 4 (âge, sexe, HTA, diabète) ; HAS-BLED = 1.
Je n'ai pas encore débuté d'anticoagulation, dans l'attente de votre avis et de la
fonction rénale de contrôle.""",
        "Biologie du 12 mars": "\n".join(f"- {n:<18}{v:>20}   (N : {r})" for n, v, r in _BIOLOGY),
        "Questions": """
1. Confirmez-vous l'indication d'une anticoagulation (AOD adapté au DFG) ?
2. Une échocardiographie rapide vous paraît-elle nécessaire ? Je suspecte une
   insuffisance cardiaque dont la fraction d'éjection reste à préciser (NT-proBNP élevé).
3. Quelle stratégie proposez-vous : contrôle de la fréquence ou du rythme ?
J'ai introduit du furosémide 40 mg le matin depuis le 14 mars, avec une kaliémie de
contrôle prévue le 19, et je la reverrai en fin de semaine. Devant la tachycardie
persistante, un rendez-vous sous 8 à 10 jours serait souhaitable ; à défaut, merci de
me le signaler pour que je l'oriente vers les urgences cardiologiques de Moulins.
Je reste joignable au cabinet (04 70 00 00 00) ou par messagerie sécurisée de santé.""",
    },
)

DISCHARGE_LETTER = letter(
    HOSPITALIST,
    "Dr François Bénard (médecin traitant) ; Mme Zoé Mercier, IDE libérale",
    "lettre de liaison à la sortie — hospitalisation en médecine interne",
    {
        "Séjour": """
Hospitalisation du 11/03/2025 au 19/03/2025 dans le service de médecine interne
(3e étage) pour décompensation cardiaque globale inaugurale sur fibrillation atriale
rapide. Entrée par les urgences, adressée par son médecin traitant.""",
        "Synthèse": """
Échocardiographie transthoracique : FEVG 40 %, oreillette gauche dilatée (42 mL/m²),
pas de valvulopathie significative, PAPs estimée à 38 mmHg. Ralentissement de la FA par
bisoprolol, déplétion par furosémide IV puis per os (−4 kg). Anticoagulation par apixaban
débutée le 12/03. Fonction rénale stable (créatinine de sortie 101 µmol/L, kaliémie
4,4 mmol/L). Pas d'événement hémorragique. Éducation thérapeutique réalisée (pesée,
signes d'alerte, observance de l'anticoagulant).""",
        "Traitement de sortie": """
- Apixaban 5 mg : 1 cp matin et soir (nouveau)
- Bisoprolol 2,5 mg : 1 cp le matin (nouveau)
- Furosémide 40 mg : 1 cp le matin (nouveau)
- Ramipril 5 mg, metformine 1000 mg x2, atorvastatine 20 mg, lévothyroxine 75 µg :
  inchangés
Ordonnance remise à la patiente et transmise à la pharmacie habituelle.""",
        "Suites à organiser": """
- IDE à domicile : pesée quotidienne, surveillance des œdèmes et de la tension, pilulier.
- Ionogramme et créatinine à J+7 (26/03), résultats au médecin traitant.
- Consultation cardiologique à 1 mois (Dr Gérard-Moreau, rendez-vous pris le 17/04).
- Consultation du médecin traitant dans les 8 jours.
- Consulter en urgence si prise de poids > 2 kg en 3 jours, essoufflement au repos,
  saignement ou malaise.""",
    },
)

CONSULTATION_REPORT = letter(
    CARDIOLOGIST,
    "Dr François Bénard, médecin généraliste",
    "compte rendu de consultation cardiologique",
    {
        "Conclusion": """
FA permanente probable, insuffisance cardiaque à FEVG modérément altérée (45 %) à
l'échographie de ce jour, sans valvulopathie. CHA2DS2-VASc 4 : apixaban 5 mg x2 introduit.
Bisoprolol 2,5 mg. Poursuite du furosémide. Holter ECG et contrôle échographique à
3 mois ; je la revois ensuite.""",
    },
)

EXPERTISE_DOCUMENT = letter(
    GP,
    "Dr Loïc Le Bihan, dermatologue, CHU de Clermont-Ferrand",
    "demande de téléexpertise dermatologique — lésion pigmentée du dos",
    {
        "Description": """
Lésion pigmentée de 8 x 6 mm de la région scapulaire gauche, apparue ou modifiée depuis
6 mois selon la patiente : bords irréguliers, deux teintes (brun clair, brun foncé), pas de
saignement. Trois photographies en dermoscopie transmises par la plateforme. Pas
d'antécédent personnel ni familial de mélanome. Phototype II.""",
    },
)
