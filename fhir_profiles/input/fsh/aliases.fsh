// Code systems and identifier systems the profiles pin (FIELD-NOTES 3.1, 3.3, 3.5).
Alias: $DCM = http://dicom.nema.org/resources/ontology/DCM
Alias: $SCT = http://snomed.info/sct
Alias: $ObservationValue = http://terminology.hl7.org/CodeSystem/v3-ObservationValue
Alias: $ActCode = http://terminology.hl7.org/CodeSystem/v3-ActCode
Alias: $DataOperation = http://terminology.hl7.org/CodeSystem/v3-DataOperation
Alias: $LibraryType = http://terminology.hl7.org/CodeSystem/library-type
Alias: $ParticipantType = http://terminology.hl7.org/CodeSystem/provenance-participant-type

// Every resource the server emits names its profile.
RuleSet: DeclaresProfile
* meta 1..1
* meta.profile 1..*

// Pseudonymized content is labelled PSEUDED (v3 ObservationValue), beside any other label:
// a slice, so that other security labels stay allowed.
RuleSet: Pseudonymized
* meta.security 1..*
* meta.security ^slicing.discriminator.type = #pattern
* meta.security ^slicing.discriminator.path = "$this"
* meta.security ^slicing.rules = #open
* meta.security ^slicing.description = "The PSEUDED label, among any others"
* meta.security contains pseudonymized 1..1
* meta.security[pseudonymized] = $ObservationValue#PSEUDED
