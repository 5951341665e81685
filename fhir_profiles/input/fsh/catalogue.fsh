Profile: DepotDatasetDescription
Parent: Library
Id: depot-dataset-description
Title: "Dataset description"
Description: "A project's dataset in the catalogue: canonical metadata on a Library (FIELD-NOTES 3.5), the HealthDCAT-AP Turtle of the same dataset as its content, so FHIR and RDF cannot drift."
* insert DeclaresProfile
* type = $LibraryType#asset-collection
* url 1..1
* identifier 1..*
* version 0..1
* title 1..1
* status 1..1
* publisher 1..1
* contact 1..*
* description 1..1
* purpose 1..1
* topic 0..*
* relatedArtifact 0..*
* relatedArtifact.type = #documentation
* content 0..*
* content.contentType 1..1
* content.contentType = #text/turtle

Profile: DepotDatasetCatalog
Parent: Library
Id: depot-dataset-catalog
Title: "Dataset catalogue"
Description: "The server's catalogue: a Library composed of the dataset descriptions it lists."
* insert DeclaresProfile
* type = $LibraryType#asset-collection
* url 1..1
* title 1..1
* status 1..1
* publisher 1..1
* relatedArtifact 1..*
* relatedArtifact.type = #composed-of
* relatedArtifact.resource 1..1

Instance: depot-dataset-description-example
InstanceOf: DepotDatasetDescription
Usage: #example
Title: "The demo project's dataset"
* meta.profile = Canonical(DepotDatasetDescription)
* url = "https://depot.example.org/fhir/Library/dataset-demo"
* identifier.system = "https://w3id.org/imaging-depot/id/dataset"
* identifier.value = "demo"
* version = "1"
* title = "Demo imaging dataset"
* status = #active
* type = $LibraryType#asset-collection
* publisher = "Example hospital"
* contact.telecom.system = #email
* contact.telecom.value = "data-office@example.org"
* description = "Pseudonymized CT and MR studies of the demo project."
* purpose = "Research on abdominal imaging."
* relatedArtifact.type = #documentation
* relatedArtifact.url = "https://depot.example.org/projects/demo"
* content.contentType = #text/turtle
* content.url = "https://depot.example.org/catalog/datasets/demo.ttl"

Instance: depot-dataset-catalog-example
InstanceOf: DepotDatasetCatalog
Usage: #example
Title: "The server's catalogue"
* meta.profile = Canonical(DepotDatasetCatalog)
* url = "https://depot.example.org/fhir/Library/catalog"
* title = "imaging-depot catalogue"
* status = #active
* type = $LibraryType#asset-collection
* publisher = "Example hospital"
* relatedArtifact.type = #composed-of
* relatedArtifact.resource = "https://depot.example.org/fhir/Library/dataset-demo"
