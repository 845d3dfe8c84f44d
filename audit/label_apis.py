"""REST API of clinician feedback: `GET/POST /api/v1/predictions/<id>/labels/`.

Whoever may see a prediction (its owner, auditors, superusers) may mark its findings; anything not
visible is a 404, as for the prediction itself."""

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from audit import label_selectors, label_services
from audit import selectors as audit_selectors
from audit.models import FindingLabel, Prediction
from common.api_errors import error_responses
from common.fields import TextField
from common.permissions import has_perm

CanViewPredictions = has_perm("audit.view_prediction")


class MarkSerializer(serializers.Serializer):
    finding = TextField(
        max_length=100,
        help_text="A finding of the prediction, by its name or a synonym the label tables accept "
        "(case, spaces, hyphens and underscores ignored; e.g. 'Pleural Effusion' for Effusion).",
    )
    value = serializers.ChoiceField(choices=[value for value, _ in FindingLabel.VALUE_CHOICES])


class LabelOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    finding = serializers.CharField()
    value = serializers.CharField()
    user = serializers.CharField(source="user.get_username")
    created_at = serializers.DateTimeField()
    after_model_output = serializers.BooleanField()


class LabelsOutputSerializer(serializers.Serializer):
    prediction = serializers.IntegerField()
    labels = LabelOutputSerializer(many=True, help_text="The latest mark per finding: the labels.")
    history = LabelOutputSerializer(many=True, help_text="Every mark, newest first (append-only).")


class PredictionLabelsApi(APIView):
    permission_classes = [CanViewPredictions]
    # A list of marks has no form encoding: JSON only (a form body is a 415 that says so).
    parser_classes = [JSONParser]

    class InputSerializer(serializers.Serializer):
        labels = MarkSerializer(many=True, allow_empty=False)
        after_model_output = serializers.BooleanField(
            default=True,
            help_text="False only when the reader marked the findings without having seen this "
            "prediction's output (e.g. a blinded read entered afterwards). Training reports how many "
            "of its labels were given after seeing the output.",
        )

    def _prediction(self, request, pk: int) -> Prediction:
        try:
            return audit_selectors.prediction_get_for(user=request.user, pk=pk)
        except Prediction.DoesNotExist:
            raise exceptions.NotFound(f"Prediction {pk} not found.") from None

    def _body(self, prediction: Prediction) -> dict:
        return LabelsOutputSerializer(
            {
                "prediction": prediction.pk,
                "labels": label_selectors.finding_labels_latest(prediction=prediction),
                "history": label_selectors.finding_labels_history(prediction=prediction),
            }
        ).data

    @extend_schema(
        operation_id="predictions_labels_retrieve",
        responses={200: LabelsOutputSerializer, **error_responses(401, 403, 404)},
    )
    def get(self, request, pk: int):
        """The clinician feedback on a prediction: current labels and every mark behind them."""
        return Response(self._body(self._prediction(request, pk)))

    @extend_schema(
        operation_id="predictions_labels_create",
        request=InputSerializer,
        responses={201: LabelsOutputSerializer, **error_responses(400, 401, 403, 404, 415)},
    )
    def post(self, request, pk: int):
        """Marks findings present, absent or unsure; appended, the latest mark is the label."""
        prediction = self._prediction(request, pk)
        given = self.InputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        marks = {mark["finding"]: mark["value"] for mark in given.validated_data["labels"]}
        # LabelRefused is a common.errors.Refused: the API's handler answers it 400 `invalid`.
        label_services.finding_labels_add(
            prediction=prediction,
            marks=marks,
            user=request.user,
            after_model_output=given.validated_data["after_model_output"],
        )
        return Response(self._body(prediction), status=status.HTTP_201_CREATED)
