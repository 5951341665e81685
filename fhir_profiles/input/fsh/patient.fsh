Profile: DepotPatient
Parent: Patient
Id: depot-patient
Title: "Pseudonymous Patient"
Description: "The research side's patient: a pseudonym in the project's own identifier system and nothing that identifies the person (no name, birth date, address, telecom, photo or contact)."
* insert DeclaresProfile
* insert Pseudonymized
* identifier 1..*
* identifier.system 1..1
* identifier.value 1..1
* name 0..0
* telecom 0..0
* birthDate 0..0
* address 0..0
* photo 0..0
* contact 0..0

Instance: depot-patient-example
InstanceOf: DepotPatient
Usage: #example
Title: "A pseudonymous patient"
* meta.profile = Canonical(DepotPatient)
* meta.security[pseudonymized] = $ObservationValue#PSEUDED "pseudonymized"
* identifier.system = "https://w3id.org/imaging-depot/id/demo/patient"
* identifier.value = "P7K2M9QX4T"
